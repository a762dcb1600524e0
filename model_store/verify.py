"""Checks a version before anyone trusts it: file sizes, sha256, signature, golden outputs."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NotRunnableHere, StoreError
from .hashes import HashCache as HashCache  # re-exported: where callers have always found it
from .manifest import Manifest
from .runtimes import Runtime, Tensors, load_runtime
from .signing import TrustPolicy, check_folder


def save_examples(path: Path, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Example inputs and golden outputs in one .npz (read back with pickles disabled)."""
    arrays = {f"in.{k}": v for k, v in inputs.items()} | {f"out.{k}": v for k, v in outputs.items()}
    with path.open("wb") as f:
        np.savez(f, **arrays)


def load_examples(path: Path) -> tuple[Tensors, Tensors]:
    try:
        with np.load(path, allow_pickle=False) as z:
            ins = {k[3:]: z[k] for k in z.files if k.startswith("in.")}
            outs = {k[4:]: z[k] for k in z.files if k.startswith("out.")}
    except (OSError, ValueError) as e:
        raise StoreError(f"{path.name}: unreadable examples file ({e})") from None
    return ins, outs


def max_error(got: Mapping[str, np.ndarray[Any, Any]], want: Tensors) -> float:
    """The largest absolute difference over all outputs (inf on a shape mismatch)."""
    worst = 0.0
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            return float("inf")
        if w.size:
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
            worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf"))
    return worst


def golden_problem(
    fmt: str, got: Mapping[str, np.ndarray[Any, Any]], want: Tensors, atol: float, rtol: float
) -> str | None:
    """Why outputs fail the golden check (non-finite, shape or tolerance), or None."""
    for name, g in got.items():
        if np.issubdtype(g.dtype, np.floating) and not np.isfinite(g).all():
            return f"{fmt}: output {name!r} has non-finite values"
    for name, w in want.items():
        out = got.get(name)
        if out is None or out.shape != w.shape:
            shape = None if out is None else list(out.shape)
            return f"{fmt}: output {name!r} shape {shape} != golden {list(w.shape)}"
        if not np.allclose(out, w, atol=atol, rtol=rtol):
            return (
                f"{fmt}: outputs differ from the golden outputs "
                f"(max error {max_error(got, want):.3g}, atol {atol:g}, rtol {rtol:g})"
            )
    return None


@dataclass
class VerifyReport:
    """The outcome of verifying one version. `ok` is False when any check failed."""

    name: str
    version: int
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    servable: list[str] = field(default_factory=list)
    max_errors: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems)


def check_files(folder: Path, manifest: Manifest, hashes: HashCache) -> list[str]:
    """Missing files, wrong sizes and checksum mismatches."""
    problems = []
    for entry in manifest.files:
        p = folder / entry.path
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{entry.path}: missing")
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end a read
            problems.append(f"{entry.path}: not a regular file")
        elif st.st_size != entry.size:
            problems.append(f"{entry.path}: size {st.st_size} != manifest {entry.size}")
        else:
            try:
                digest = hashes.sha256(p)
            except OSError as e:
                problems.append(f"{entry.path}: unreadable ({e.strerror})")
                continue
            if digest != entry.sha256:
                problems.append(f"{entry.path}: sha256 mismatch (file changed or corrupted)")
    return problems


def check_artifact(
    folder: Path,
    manifest: Manifest,
    fmt: str,
    *,
    device: str = "cpu",
    trust_pickle: bool = False,
    threads: int | None = None,
) -> tuple[Runtime, float]:
    """Load one artifact and reproduce the golden outputs; raise StoreError naming the failure."""
    artifact = manifest.artifact(fmt)
    if artifact is None:
        raise StoreError(f"no {fmt} artifact in version {manifest.version}")
    ins, want = load_examples(folder / manifest.examples.path)
    try:
        runtime = load_runtime(
            fmt,
            folder / artifact.path,
            manifest.signature,
            device=device,
            factory=manifest.model_factory,
            trust_pickle=trust_pickle,
            threads=threads,
            environment=artifact.environment,
        )
    except StoreError:
        raise
    except Exception as e:  # onnxruntime, torch.jit and unpickling raise many types on bad files
        raise StoreError(f"{fmt}: cannot be loaded ({type(e).__name__}: {e})") from None
    try:
        got = runtime.predict(ins)
    except Exception as e:  # any failure of the model on its own examples rejects it
        raise StoreError(f"{fmt}: failed on the example inputs ({type(e).__name__}: {e})") from None
    problem = golden_problem(fmt, got, want, manifest.examples.atol, manifest.examples.rtol)
    if problem:
        raise StoreError(problem)
    return runtime, max_error(got, want)


def verify_version(
    folder: Path, manifest: Manifest, hashes: HashCache, *, trust_pickle: bool = False, trust: TrustPolicy | None = None
) -> VerifyReport:
    """Every check a version must pass before it may serve, on the CPU. With `trust`, the
    signature is checked right after the checksums (whose sha256s it reuses) and before any
    artifact is loaded: bytes of unknown origin are never handed to a runtime."""
    report = VerifyReport(manifest.name, manifest.version)
    report.problems = check_files(folder, manifest, hashes)
    if report.problems:
        return report
    if trust is not None:
        signed = check_folder(folder, trust, hashes, f"{manifest.name}/{manifest.version}")
        if signed.problem:
            report.problems.append(signed.problem)
            return report
        report.notes.append(signed.note)
    try:
        ins, outs = load_examples(folder / manifest.examples.path)
    except StoreError as e:
        report.problems.append(str(e))
        return report
    report.problems += manifest.signature.check(ins, outs)
    if report.problems:
        return report
    for artifact in manifest.artifacts:
        fmt = artifact.format
        if fmt == "state_dict" and manifest.model_factory is None:
            report.notes.append("state_dict: not servable: no model_factory")
            continue
        if fmt == "pickle" and not trust_pickle:
            report.notes.append("pickle: not checked: untrusted pickle (needs trust_pickle)")
            continue
        try:
            _, err = check_artifact(folder, manifest, fmt, trust_pickle=trust_pickle)
        except NotRunnableHere as e:  # built for another machine: not a fault of the version
            report.notes.append(f"{fmt}: {e}")
            continue
        except StoreError as e:
            report.problems.append(str(e))
            continue
        report.servable.append(fmt)
        report.max_errors[fmt] = err
    return report
