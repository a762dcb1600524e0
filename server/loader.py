"""Loader: one version -> a validated, warmed servable on the chosen device, or a reason why not.

Cheap to construct; all the work is in `load()` (TF Serving's loader contract).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store import StoreError
from model_store.manifest import Manifest
from model_store.runtimes import Runtime, Tensors
from model_store.verify import HashCache, check_artifact, check_files, load_examples

from .config import ModelConfig
from .resources import usable_cpus

log = logging.getLogger(__name__)

PLATFORMS = {
    "onnx": "onnx_onnxv1",
    "torchscript": "pytorch_torchscript",
    "state_dict": "pytorch_eager",
    "pickle": "pytorch_eager",
}


class Rejected(Exception):
    """A version that must not serve; the message is the reason shown to operators."""


@dataclass
class Servable:
    """A loaded, validated version: what requests compute with. It does not manage itself."""

    name: str
    version: int
    manifest: Manifest
    runtime: Runtime
    artifact: str
    device: str
    why: str
    load_seconds: float

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Tensors:
        return self.runtime.predict(inputs)

    def describe(self) -> dict[str, str]:
        return {
            "version": str(self.version),
            "artifact": self.artifact,
            "device": self.device,
            "choice": self.why,
            "load_seconds": f"{self.load_seconds:.3f}",
            **self.runtime.describe(),
        }


def pick_device(requested: str) -> str:
    """`auto` is CUDA when torch sees a GPU, else CPU; an explicit CUDA device must exist."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise Rejected(f"device {requested} requested but torch sees {torch.cuda.device_count()} CUDA device(s)")
        return f"cuda:{index}"
    return "cpu"


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def pick_artifact(manifest: Manifest, cfg: ModelConfig, device: str) -> tuple[str, str]:
    """The format to load for `device`, and why (logged and shown in model metadata)."""
    present = {a.format for a in manifest.artifacts}
    if manifest.model_factory is None:
        present.discard("state_dict")  # not rebuildable: never served
    if not cfg.trust_pickle:
        present.discard("pickle")
    if cfg.artifact != "auto":
        if cfg.artifact not in present:
            raise Rejected(
                f"config asks for artifact {cfg.artifact!r}; this version has none usable ({sorted(present)})"
            )
        return cfg.artifact, f"{cfg.artifact} as configured"
    if device == "cpu":
        order = ["onnx", "torchscript", "state_dict", "pickle"]
        why = "onnxruntime is the fastest CPU runtime; torch formats are fallbacks"
    elif _ort_has_cuda():
        order = ["onnx", "torchscript", "state_dict", "pickle"]
        why = "onnxruntime has the CUDA execution provider"
    else:
        order = ["torchscript", "state_dict", "pickle", "onnx"]
        why = "onnxruntime here has no CUDA provider, so a torch format runs on the GPU"
    for fmt in order:
        if fmt in present:
            return fmt, f"{fmt} on {device}: {why}"
    raise Rejected("no servable artifact (a state_dict needs a model_factory; a pickle needs trust_pickle)")


def default_threads(cfg: ModelConfig, total_workers: int, api_servers: int) -> int:
    if cfg.threads:
        return cfg.threads
    return max(1, usable_cpus() // (total_workers + api_servers))


class Loader:
    """Loads `name:version` from a store folder for one worker."""

    def __init__(self, root: Path, cfg: ModelConfig, hashes: HashCache, threads: int) -> None:
        self.root, self.cfg, self.hashes, self.threads = root, cfg, hashes, threads

    def load(self, version: int) -> Servable:
        started = time.perf_counter()
        name = self.cfg.name
        folder = self.root / name / str(version)
        try:
            manifest = Manifest.load(folder)
        except StoreError as e:
            raise Rejected(str(e)) from None
        problems = check_files(folder, manifest, self.hashes)
        if problems:
            raise Rejected("; ".join(problems))
        device = pick_device(self.cfg.device)
        fmt, why = pick_artifact(manifest, self.cfg, device)
        if fmt == "pickle":
            log.warning("%s:%s loading a trusted pickle (sha256 verified)", name, version)
        try:
            runtime, err = check_artifact(
                folder,
                manifest,
                fmt,
                device=device,
                trust_pickle=self.cfg.trust_pickle,
                threads=self.threads,
            )
            self._warm_up(runtime, folder, manifest)
        except StoreError as e:
            raise Rejected(str(e)) from None
        seconds = time.perf_counter() - started
        log.info(
            "%s:%s loaded %s on %s in %.2fs (golden max error %.2g): %s",
            name,
            version,
            fmt,
            device,
            seconds,
            err,
            why,
        )
        return Servable(name, version, manifest, runtime, fmt, device, why, seconds)

    def _warm_up(self, runtime: Runtime, folder: Path, manifest: Manifest) -> None:
        """Run the examples tiled to a full batch so first requests do not pay for allocation."""
        ins, _ = load_examples(folder / manifest.examples.path)
        rows = next(iter(ins.values())).shape[0]
        reps = max(1, -(-self.cfg.max_batch_size // max(rows, 1)))
        full = {k: np.concatenate([v] * reps)[: self.cfg.max_batch_size] for k, v in ins.items()}
        for batch in (ins, full):
            runtime.predict(batch)
