"""Export a live model to each artifact format the store knows."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import aoti
from .errors import StoreError, UntrustedPickle
from .torch_export import export_program

FILENAMES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "exported": "model.exported.pt2",  # torch.export (model_store/torch_export.py)
    "state_dict": "model.state_dict.pt",
    "pickle": "model.pickle.pt",
    "aoti": "model.aoti.pt2",
}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter prints progress and optional-dependency warnings; a publish log wants none."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None = None,
) -> None:
    """ONNX with named tensors and a dynamic batch axis on every input (torch.export based)."""
    batch = torch.export.Dim.DYNAMIC
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamic_shapes=tuple({0: batch} for _ in args),
                external_data=False,  # one self-contained file: the manifest lists model files
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the user needs the summary
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"onnx: export failed: {first}") from e


def export_torchscript(
    model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, method: str = "trace"
) -> None:
    """TorchScript by tracing (default) or scripting."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        try:
            if method == "trace":
                scripted = torch.jit.trace(model, args)  # type: ignore[no-untyped-call]
            elif method == "script":
                scripted = torch.jit.script(model)
            else:
                raise StoreError(f"torchscript method {method!r} must be 'trace' or 'script'")
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"torchscript: {method} failed: {e}") from e
    scripted.save(str(path))


def export(
    fmt: str,
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    folder: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int | None = None,
    torchscript_method: str = "trace",
    trust_pickle: bool = False,
) -> Path:
    """Write `model` in format `fmt` into `folder`; returns the file written."""
    if fmt not in FILENAMES:
        raise StoreError(f"unknown format {fmt!r}; expected one of {sorted(FILENAMES)}")
    path = folder / FILENAMES[fmt]
    if fmt == "onnx":
        export_onnx(model, args, path, input_names, output_names, opset)
    elif fmt == "torchscript":
        export_torchscript(model, args, path, torchscript_method)
    elif fmt == "exported":
        export_program(model, args, path)
    elif fmt == "state_dict":
        torch.save(model.state_dict(), path)
    elif fmt == "aoti":
        aoti.export_aoti(model, args, path)
    else:
        if not trust_pickle:
            raise UntrustedPickle(
                "format 'pickle' stores the whole model object, which runs code when loaded; "
                "pass trust_pickle=True to publish it (prefer state_dict with a model_factory)"
            )
        torch.save(model, path)
    return path


def environment(fmt: str) -> dict[str, Any] | None:
    """The build environment a format's artifact depends on (compiled code), recorded per artifact."""
    return aoti.build_environment("cpu") if fmt == "aoti" else None
