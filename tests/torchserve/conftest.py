"""Real TorchServe archives, made by the real `torch-model-archiver` (its CLI, as users run it)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from .models import TinyNet
from .vision_model import TinyVision

MODEL_FILE = Path(__file__).with_name("models.py")
VISION_FILE = Path(__file__).with_name("vision_model.py")
NAMES = ["tench", "goldfish", "shark", "ray", "cock", "hen", "finch", "junco", "bunting", "robin"]
LABELS = {str(i): name for i, name in enumerate(NAMES)}


def archiver() -> str:
    found = Path(sys.executable).with_name("torch-model-archiver")
    return str(found) if found.exists() else shutil.which("torch-model-archiver") or "torch-model-archiver"


def make_mar(
    out: Path, name: str, serialized: Path, handler: str, *extra: Path, model_file: Path | None = None
) -> Path:
    args = [archiver(), "--model-name", name, "--version", "1.0", "--serialized-file", str(serialized)]
    args += ["--handler", handler, "--export-path", str(out), "--force"]
    if model_file is not None:
        args += ["--model-file", str(model_file)]
    if extra:
        args += ["--extra-files", ",".join(str(p) for p in extra)]
    # The archiver stages files in $TMPDIR/<model name>: a private TMPDIR keeps parallel runs apart.
    tmp = out / f".tmp-{name}"
    tmp.mkdir(exist_ok=True)
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp)})
    assert done.returncode == 0, f"torch-model-archiver failed: {done.stderr[-2000:]}"
    shutil.rmtree(tmp, ignore_errors=True)
    return out / f"{name}.mar"


@dataclass(frozen=True)
class Archives:
    eager: Path  # TinyNet: models.py + a state_dict, base_handler
    torchscript: Path  # TinyNet traced
    image: Path  # TinyVision traced, image_classifier, index_to_name.json
    example: Path  # a .npy batch of TinyNet's inputs
    tiny: TinyNet
    vision: TinyVision


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    work = tmp_path_factory.mktemp("mar")
    torch.manual_seed(0)
    tiny, vision = TinyNet().eval(), TinyVision().eval()
    torch.save(tiny.state_dict(), work / "tiny.pt")
    torch.jit.save(torch.jit.trace(tiny, torch.rand(2, 4)), work / "tiny_ts.pt")  # type: ignore[no-untyped-call]
    torch.jit.save(torch.jit.trace(vision, torch.rand(2, 3, 224, 224)), work / "vision.pt")  # type: ignore[no-untyped-call]
    (work / "index_to_name.json").write_text(json.dumps(LABELS))
    np.save(work / "x.npy", np.random.default_rng(1).random((3, 4), dtype=np.float32))
    out = work / "archives"
    out.mkdir()
    return Archives(
        eager=make_mar(out, "tiny", work / "tiny.pt", "base_handler", model_file=MODEL_FILE),
        torchscript=make_mar(out, "tinyts", work / "tiny_ts.pt", "base_handler"),
        image=make_mar(out, "vision", work / "vision.pt", "image_classifier", work / "index_to_name.json"),
        example=work / "x.npy",
        tiny=tiny,
        vision=vision,
    )


def jpeg(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-like RGB JPEG (smooth gradients and noise), not square, so resize and crop matter."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()
