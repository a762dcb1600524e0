"""Loader: one verified version -> a validated, warmed servable on the chosen device, or a reason.

Cheap to construct; all the work is in `load()` (TF Serving's loader contract). The supervisor
verified the version's files and manifest once for the whole server and hands over its verdict;
the loader only checks that the files are still those it verified (a stat each), then loads the
artifact and reproduces the golden outputs on this worker's device: that check is about the
device and runtime, not the files.
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
from model_store.errors import NotRunnableHere
from model_store.manifest import Manifest
from model_store.runtimes import Runtime, Tensors
from model_store.verify import check_artifact, load_examples

from ..config import ModelConfig
from ..handlers import BoundHandler, HandlerNotFound, HandlerSetupError, load_handler, setup_handler
from ..ipc.messages import Verdict
from ..resources import available_memory, usable_cpus
from . import fastest

log = logging.getLogger(__name__)

PLATFORMS = {
    "onnx": "onnx_onnxv1",
    "torchscript": "pytorch_torchscript",
    "exported": "pytorch_exported",
    "state_dict": "pytorch_eager",
    "pickle": "pytorch_eager",
    "aoti": "pytorch_aoti",
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
    stats: tuple[tuple[str, int, int], ...] = ()  # the verified files it was loaded from
    folder: Path = Path()  # where they are (its stored examples, for a rollout's evidence)
    handler: BoundHandler | None = None  # the user's pre- and post-processing, set up for this version

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


def pick_artifacts(manifest: Manifest, cfg: ModelConfig, device: str) -> list[tuple[str, str]]:
    """The formats to try for `device`, best first, each with why (logged and shown in model metadata).

    More than one only for `auto`: an aoti package built for another machine is skipped for the next.
    """
    present = {a.format for a in manifest.artifacts}
    if manifest.model_factory is None:
        present.discard("state_dict")  # not rebuildable: never served
    if not cfg.trust_pickle:
        present.discard("pickle")
    if not cfg.trust_native_code:
        present.discard("aoti")  # native code: only where the config trusts the store's writers
    if cfg.artifact not in ("auto", "fastest"):
        if cfg.artifact not in present:
            raise Rejected(
                f"config asks for artifact {cfg.artifact!r}; this version has none usable ({sorted(present)})"
            )
        return [(cfg.artifact, f"{cfg.artifact} as configured")]
    if device == "cpu":
        order = ["onnx", "torchscript", "exported", "state_dict", "pickle"]
        why = "onnxruntime is the fastest CPU runtime; torch formats are fallbacks"
    elif _ort_has_cuda():
        order = ["onnx", "torchscript", "exported", "state_dict", "pickle"]
        why = "onnxruntime has the CUDA execution provider"
    else:
        order = ["torchscript", "exported", "state_dict", "pickle", "onnx"]
        why = "onnxruntime here has no CUDA provider, so a torch format runs on the GPU"
    if "aoti" in present:  # compiled ahead of time for one machine: first where it can run, else skipped
        order = ["aoti", *order]
    candidates = []
    for i, fmt in enumerate(order):
        if fmt in present:
            first = i == 0
            candidates.append(
                (fmt, f"{fmt} on {device}: " + (why if first else f"the first of {order} this version has ({why})"))
            )
    if not candidates:
        raise Rejected("no servable artifact (a state_dict needs a model_factory; a pickle needs trust_pickle)")
    return candidates


def default_threads(cfg: ModelConfig, total_workers: int, api_servers: int) -> int:
    if cfg.threads:
        return cfg.threads
    return max(1, usable_cpus() // (total_workers + api_servers))


def changed_files(verdict: Verdict) -> list[str]:
    """Files that are no longer what the supervisor verified (one stat each, no reading)."""
    changed = []
    for rel, size, mtime_ns in verdict.stats:
        try:
            st = (verdict.folder / rel).stat()
        except OSError:
            changed.append(f"{rel}: missing")
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            changed.append(f"{rel}: changed since it was verified")
    return changed


def memory_problem(manifest: Manifest, fmt: str, device: str) -> str | None:
    """Refuse a second copy that would not fit: about 3x the artifact (file, runtime, arena)."""
    artifact = manifest.artifact(fmt)
    need = 3 * (artifact.size if artifact else 0)
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if need > free:
            return f"not enough GPU memory on {device}: need ~{need >> 20} MiB, {free >> 20} MiB free"
        return None
    available = available_memory()
    if available is not None and need > available:
        return f"not enough memory: need ~{need >> 20} MiB, {available >> 20} MiB available"
    return None


class Loader:
    """Loads verified versions of one model for one worker."""

    def __init__(self, cfg: ModelConfig, threads: int) -> None:
        self.cfg, self.threads = cfg, threads

    def load(self, verdict: Verdict) -> Servable:
        started = time.perf_counter()
        name, version, folder, manifest = self.cfg.name, verdict.version, verdict.folder, verdict.manifest
        changed = changed_files(verdict)
        if changed:
            raise Rejected("; ".join(changed))
        device = pick_device(self.cfg.device)
        runtime, fmt, err, why = self._pick_and_load(folder, manifest, device)
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
        handler = None
        if self.cfg.handler:  # after the golden check: the handler is about requests, not the model
            try:
                handler = setup_handler(load_handler(self.cfg.handler), manifest, folder)
            except (HandlerSetupError, HandlerNotFound) as e:
                raise Rejected(str(e)) from None
        return Servable(name, version, manifest, runtime, fmt, device, why, seconds, verdict.stats, folder, handler)

    def _pick_and_load(self, folder: Path, manifest: Manifest, device: str) -> tuple[Runtime, str, float, str]:
        """The first candidate that runs here (or, for `fastest`, the quickest of them), loaded,
        golden-checked and warm: (runtime, format, golden max error, why)."""
        name, version = self.cfg.name, manifest.version
        skipped: list[str] = []
        loaded: list[tuple[Runtime, str, float, str]] = []
        timings: dict[str, float] = {}
        for fmt, choice in pick_artifacts(manifest, self.cfg, device):
            if fmt == "pickle":
                log.warning("%s:%s loading a trusted pickle (sha256 verified)", name, version)
            try:
                runtime, err = check_artifact(
                    folder, manifest, fmt, device=device, trust_pickle=self.cfg.trust_pickle, threads=self.threads
                )
                full = self._warm_up(runtime, folder, manifest)
            except NotRunnableHere as e:  # built for another machine: the next artifact may run
                log.warning("%s:%s skipping %s: %s", name, version, fmt, e)
                skipped.append(f"{fmt}: {e}")
                continue
            except StoreError as e:
                raise Rejected(str(e)) from None
            loaded.append((runtime, fmt, err, choice))
            if self.cfg.artifact != "fastest":
                break
            timings[fmt] = fastest.seconds_per_batch(runtime, full)
        if not loaded:
            raise Rejected("; ".join(skipped))
        runtime, fmt, err, why = min(loaded, key=lambda c: timings.get(c[1], 0.0))
        if timings:
            why = fastest.describe(fmt, device, timings, self.cfg.max_batch_size)
        if skipped:
            why += f" ({'; '.join(skipped)})"
        return runtime, fmt, err, why

    def _warm_up(self, runtime: Runtime, folder: Path, manifest: Manifest) -> Tensors:
        """Run the examples tiled to a full batch so first requests do not pay for allocation."""
        ins, _ = load_examples(folder / manifest.examples.path)
        rows = next(iter(ins.values())).shape[0]
        reps = max(1, -(-self.cfg.max_batch_size // max(rows, 1)))
        full = {k: np.concatenate([v] * reps)[: self.cfg.max_batch_size] for k, v in ins.items()}
        for batch in (ins, full):
            runtime.predict(batch)
        return full
