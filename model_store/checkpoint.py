"""CheckpointManager: atomic training checkpoints, best and latest, exact resume.

Each checkpoint is one file that `torch.load(path, weights_only=True)` reads with no allow-list:
RNG states are stored as tensors and plain lists, never as pickled objects.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import StoreError

_PERIODIC = re.compile(r"^checkpoint_epoch_(\d+)\.pt$")
BEST_NAME = "best.pt"
LATEST_NAME = "latest.pt"
_STATE_NAME = ".state.json"


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states in weights_only-loadable types."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _write_atomic(obj: Any, target: Path) -> None:
    """Temp file in the same folder, fsync, rename: a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_atomic(source: Path, target: Path) -> None:
    """Link (or copy) an already-durable file to a second name, atomically."""
    tmp = target.with_name(f".tmp-link-{target.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:  # filesystems without hard links
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = None) -> dict[str, Any]:
    """A checkpoint (or plain state_dict) dict, loaded without unpickling code."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError: the file is not a safe checkpoint
        raise StoreError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise StoreError(f"{path}: expected a checkpoint or state_dict, found {type(ckpt).__name__}")
    return ckpt


class CheckpointManager:
    """Periodic, best and latest checkpoints of one training run in one folder."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        monitor: str = "val_loss",
        mode: str = "min",
        every_n_epochs: int = 1,
        keep_last: int = 3,
    ) -> None:
        if mode not in ("min", "max"):
            raise StoreError(f"mode must be 'min' or 'max', got {mode!r}")
        if every_n_epochs < 1 or keep_last < 1:
            raise StoreError("every_n_epochs and keep_last must be at least 1")
        self.dir = Path(directory)
        if self.dir.exists() and not self.dir.is_dir():
            raise StoreError(f"checkpoint path {self.dir} is a file, not a folder")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.monitor, self.mode = monitor, mode
        self.every_n_epochs, self.keep_last = every_n_epochs, keep_last
        self.best_value: float | None = self._read_state().get("best_value")

    @property
    def best_path(self) -> Path:
        return self.dir / BEST_NAME

    @property
    def latest_path(self) -> Path:
        return self.dir / LATEST_NAME

    def periodic_paths(self) -> list[Path]:
        """Periodic checkpoints on disk, oldest first."""
        found = [(int(m[1]), p) for p in self.dir.iterdir() if (m := _PERIODIC.match(p.name))]
        return [p for _, p in sorted(found)]

    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.dir / _STATE_NAME).read_text())
            return state
        except (OSError, ValueError):
            return {}

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def save(
        self,
        epoch: int,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        metrics: dict[str, float] | None = None,
        scheduler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of a finished epoch; returns the latest checkpoint's path."""
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        checkpoint = {
            "epoch": int(epoch),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "metrics": metrics,
            "rng": rng_state(),
            "extra": extra,
        }
        _write_atomic(checkpoint, self.latest_path)
        if (epoch + 1) % self.every_n_epochs == 0:
            _copy_atomic(self.latest_path, self.dir / f"checkpoint_epoch_{epoch:04d}.pt")
            for old in self.periodic_paths()[: -self.keep_last]:
                old.unlink()
        value = metrics.get(self.monitor)
        if value is not None and self._improved(value):
            self.best_value = value
            _copy_atomic(self.latest_path, self.best_path)
            state_tmp = self.dir / f"{_STATE_NAME}.tmp"
            state_tmp.write_text(json.dumps({"best_value": value, "epoch": epoch}))
            os.replace(state_tmp, self.dir / _STATE_NAME)
        return self.latest_path

    def load(self, path: str | os.PathLike[str], map_location: Any = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location)

    def resume(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        map_location: Any = None,
    ) -> int:
        """Restore the latest checkpoint (weights, optimizer, scheduler, RNG); the next epoch."""
        if not self.latest_path.exists():
            return 0
        ckpt = self.load(self.latest_path, map_location)
        model.load_state_dict(ckpt["model"])
        if optimizer is not None and ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        return int(ckpt["epoch"]) + 1
