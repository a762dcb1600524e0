"""Publishing an artifact made elsewhere (an imported archive's TorchScript or ONNX file).

Its golden outputs are its own outputs on the example inputs, computed here before it lands,
so a server that loads it differently later is caught by the same gate as our own exports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import StoreError
from .publish import DataSource, Plan, plan
from .runtimes import Tensors
from .signature import names_for

PREBUILT_FORMATS = ("onnx", "torchscript")


def _artifact_outputs(fmt: str, path: Path, args: tuple[torch.Tensor, ...]) -> tuple[list[str], list[str], Tensors]:
    """Input names, output names and outputs of a ready-made artifact run on `args`."""
    try:
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            in_names = [i.name for i in session.get_inputs()]
            out_names = [o.name for o in session.get_outputs()]
            if len(in_names) != len(args):
                raise StoreError(
                    f"the ONNX model takes {len(in_names)} inputs {in_names}, {len(args)} example(s) given"
                )
            values = session.run(out_names, {n: a.numpy() for n, a in zip(in_names, args, strict=True)})
            return in_names, out_names, dict(zip(out_names, values, strict=True))
        if fmt == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
            with torch.inference_mode():
                out = module(*args)
            outs = out if isinstance(out, (tuple, list)) else (out,)
            in_names, out_names = names_for("input", len(args), None), names_for("output", len(outs), None)
            return in_names, out_names, {n: t.detach().numpy() for n, t in zip(out_names, outs, strict=True)}
    except StoreError:
        raise
    except Exception as e:  # onnxruntime and torch.jit raise many types; the first line says it
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"{fmt}: {path.name} does not run on the example inputs: {first}") from None
    raise StoreError(f"a ready-made artifact must be one of {list(PREBUILT_FORMATS)}, not {fmt!r}")


def plan_prebuilt(
    fmt: str,
    path: Path,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    data_files: Mapping[str, DataSource] | None = None,
    metrics: dict[str, float] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    description: str | None = None,
    tags: tuple[str, ...] | list[str] = (),
    training: dict[str, Any] | None = None,
) -> Plan:
    """A publish of an artifact made elsewhere (an ONNX file, a TorchScript file): its golden
    outputs are its own on the example inputs, so a server that loads it differently is caught."""
    if fmt not in PREBUILT_FORMATS:
        raise StoreError(f"a ready-made artifact must be one of {list(PREBUILT_FORMATS)}, not {fmt!r}")
    if not path.is_file():
        raise StoreError(f"{fmt}: {path} is not a file")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise StoreError("example_inputs must be a tensor or a tuple of tensors")
    args = tuple(a.detach().cpu() for a in args)
    in_names, _, golden = _artifact_outputs(fmt, path, args)
    parameters = 0
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        parameters = sum(p.numel() for p in module.parameters())
    clean = plan(torch.nn.Identity(), args, (fmt,), None, None, data_files=data_files, metrics=metrics)
    clean.model, clean.prebuilt, clean.parameters = None, {fmt: path}, parameters
    clean.inputs = {n: a.numpy() for n, a in zip(in_names, args, strict=True)}
    clean.golden, clean.atol, clean.rtol = golden, atol, rtol
    clean.extra = {"description": description, "tags": tuple(tags), "training": training}
    return clean
