"""The work of a publish: golden outputs from the eager model, exports, and their checks.

`plan` validates every argument before anything is written; `build` fills a staging folder.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib.metadata
import logging
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import formats as _formats
from .errors import ExportMismatch, ExportRefused, StoreError
from .manifest import DATA_FILE_NAME, FORMATS, MANIFEST_NAME, Artifact, DataFile, Examples, Manifest, ModelFactory
from .runtimes import Tensors, load_runtime, resolve_factory
from .signature import Signature, names_for
from .verify import HashCache, golden_problem, max_error, save_examples

log = logging.getLogger(__name__)
EXAMPLES_NAME = "examples.npz"
# A data file's content, or a file to copy it from.
DataSource = bytes | bytearray | memoryview | str | os.PathLike[str]
_RESERVED = {EXAMPLES_NAME, MANIFEST_NAME, *_formats.FILENAMES.values()}


@dataclass
class Plan:
    """A checked publish request: the model on the CPU (None for a ready-made artifact), its
    inputs and golden outputs."""

    model: torch.nn.Module | None
    args: tuple[torch.Tensor, ...]
    inputs: Tensors
    golden: Tensors
    formats: tuple[str, ...]
    factory: ModelFactory | None
    metrics: dict[str, float]
    opset: int | None = None
    torchscript_method: str = "trace"
    atol: float = 1e-4
    rtol: float = 1e-3
    trust_pickle: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    data_files: dict[str, bytes | Path] = field(default_factory=dict)
    prebuilt: dict[str, Path] = field(default_factory=dict)  # format -> a file copied as it is
    parameters: int = 0


def _factory(
    factory: str | Callable[..., torch.nn.Module] | None, kwargs: dict[str, Any] | None
) -> ModelFactory | None:
    if factory is None:
        if kwargs:
            raise StoreError("factory_kwargs given without a model_factory")
        return None
    if callable(factory):
        module = getattr(factory, "__module__", "")
        if module == "__main__":
            raise StoreError(
                "model_factory is defined in __main__, which a server cannot import; move it into an importable module"
            )
        factory = f"{module}:{factory.__qualname__}"
    if not isinstance(factory, str) or ":" not in factory:
        raise StoreError(f"model_factory {factory!r} must be 'module:callable' or a callable")
    resolve_factory(factory)  # fail now, not when a server first tries to rebuild the model
    return ModelFactory(factory, dict(kwargs or {}))


def check_formats(formats: tuple[str, ...], trust_pickle: bool) -> tuple[str, ...]:
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise StoreError(f"unknown format(s) {unknown or formats}; expected some of {list(FORMATS)}")
    if "pickle" in formats and not trust_pickle:
        raise StoreError("format 'pickle' needs trust_pickle=True (it runs code when loaded)")
    return formats


def check_data_files(data_files: Mapping[str, DataSource] | None) -> dict[str, bytes | Path]:
    """Names checked and sources resolved before anything is exported: bytes, or a regular file."""
    if data_files is None:
        return {}
    if not isinstance(data_files, Mapping):
        raise StoreError(f"data_files must map file names to bytes or paths, got {type(data_files).__name__}")
    checked: dict[str, bytes | Path] = {}
    for name, source in data_files.items():
        if not isinstance(name, str) or not DATA_FILE_NAME.match(name) or name in (".", ".."):
            raise StoreError(
                f"data file name {name!r} must be a plain file name: letters, digits, '_', '.' or '-', not starting with '.'"
            )
        if name in _RESERVED:
            raise StoreError(f"data file name {name!r} is taken by the version's own files {sorted(_RESERVED)}")
        if isinstance(source, (bytes, bytearray, memoryview)):
            checked[name] = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            try:
                regular = stat.S_ISREG(path.stat().st_mode)
            except OSError as e:
                raise StoreError(f"data file {name!r}: cannot read {path}: {e.strerror}") from None
            if not regular:
                raise StoreError(f"data file {name!r}: {path} is not a regular file")
            checked[name] = path
        else:
            raise StoreError(f"data file {name!r}: expected bytes or a path, got {type(source).__name__}")
    return checked


def plan(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    formats: tuple[str, ...],
    model_factory: str | Callable[..., torch.nn.Module] | None,
    factory_kwargs: dict[str, Any] | None,
    *,
    data_files: Mapping[str, DataSource] | None = None,
    metrics: dict[str, float] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    opset: int | None = None,
    torchscript_method: str = "trace",
    atol: float = 1e-4,
    rtol: float = 1e-3,
    trust_pickle: bool = False,
    description: str | None = None,
    tags: tuple[str, ...] | list[str] = (),
    training: dict[str, Any] | None = None,
) -> Plan:
    if not isinstance(model, torch.nn.Module):
        raise StoreError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    formats = check_formats(formats, trust_pickle)
    data = check_data_files(data_files)
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise StoreError("example_inputs must be a tensor or a tuple of tensors")
    args = tuple(a.detach().cpu() for a in args)
    cpu_model = copy.deepcopy(model).cpu().eval()
    with torch.inference_mode():
        out = cpu_model(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    in_names = names_for("input", len(args), input_names)
    out_names = names_for("output", len(outs), output_names)
    clean_metrics = {}
    for k, v in (metrics or {}).items():
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise StoreError(f"metric {k!r} must be a finite number, got {v!r}")
        clean_metrics[str(k)] = float(v)
    return Plan(
        parameters=sum(p.numel() for p in cpu_model.parameters()),
        model=cpu_model,
        args=args,
        inputs={n: a.numpy() for n, a in zip(in_names, args, strict=True)},
        golden={n: t.detach().numpy() for n, t in zip(out_names, outs, strict=True)},
        formats=formats,
        factory=_factory(model_factory, factory_kwargs),
        metrics=clean_metrics,
        opset=opset,
        torchscript_method=torchscript_method,
        atol=atol,
        rtol=rtol,
        trust_pickle=trust_pickle,
        extra={"description": description, "tags": tuple(tags), "training": training},
        data_files=data,
    )


def _check(plan: Plan, fmt: str, path: Path, signature: Signature, environment: dict[str, Any] | None) -> None:
    """Run the exported file as a server would and compare with the eager model."""
    try:
        runtime = load_runtime(
            fmt,
            path,
            signature,
            factory=plan.factory,
            template=copy.deepcopy(plan.model) if plan.model is not None else None,
            trust_pickle=plan.trust_pickle,
            environment=environment,
        )
        got = runtime.predict(plan.inputs)
    except StoreError as e:
        raise ExportMismatch(f"refusing to publish: {fmt}: {e}") from None
    problem = golden_problem(fmt, got, plan.golden, plan.atol, plan.rtol)
    if problem:
        raise ExportMismatch(f"refusing to publish: {problem} (max error {max_error(got, plan.golden):.3g})")


def _onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def build(plan: Plan, name: str, version: int, staging: Path, hashes: HashCache) -> Manifest:
    """Export every format into `staging`, check each, and return the manifest to write."""
    signature = Signature.from_examples(plan.inputs, plan.golden)
    artifacts = []
    framework: dict[str, Any] = {"torch": torch.__version__, "numpy": np.__version__}
    refused: list[str] = []
    for fmt in plan.formats:
        if fmt in plan.prebuilt:  # a ready-made artifact (an imported archive's): its bytes as they are
            path = staging / _formats.FILENAMES[fmt]
            shutil.copyfile(plan.prebuilt[fmt], path)
        else:
            assert plan.model is not None, "a plan without a model has every format prebuilt"
            try:
                path = _formats.export(
                    fmt,
                    plan.model,
                    plan.args,
                    staging,
                    input_names=[s.name for s in signature.inputs],
                    output_names=[s.name for s in signature.outputs],
                    opset=plan.opset,
                    torchscript_method=plan.torchscript_method,
                    trust_pickle=plan.trust_pickle,
                )
            except ExportRefused as e:  # torch cannot export this model so: the other formats land
                log.warning("refusing format %s: %s", fmt, e)
                refused.append(str(e))
                continue
        env = _formats.environment(fmt)
        _check(plan, fmt, path, signature, env)
        if fmt == "onnx":
            framework["onnx_opset"] = _onnx_opset(path)
            framework["onnxruntime"] = importlib.metadata.version("onnxruntime")
        artifacts.append(Artifact(path.name, hashes.sha256(path), path.stat().st_size, format=fmt, environment=env))
    if not artifacts:
        raise StoreError(f"refusing to publish: no format could be exported: {'; '.join(refused)}")
    examples_path = staging / EXAMPLES_NAME
    save_examples(examples_path, plan.inputs, plan.golden)
    data_files = []
    for data_name, source in plan.data_files.items():
        target = staging / data_name
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_bytes(source)
        data_files.append(DataFile(data_name, hashes.sha256(target), target.stat().st_size))
    return Manifest(
        name=name,
        version=version,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        artifacts=tuple(artifacts),
        signature=signature,
        examples=Examples(
            EXAMPLES_NAME,
            hashes.sha256(examples_path),
            examples_path.stat().st_size,
            atol=plan.atol,
            rtol=plan.rtol,
        ),
        metrics=plan.metrics,
        model_factory=plan.factory,
        framework=framework,
        parameter_count=plan.parameters,
        training=plan.extra["training"],
        description=plan.extra["description"],
        tags=plan.extra["tags"],
        data_files=tuple(data_files),
    )
