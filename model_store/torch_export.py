"""The torch.export formats: `exported` (an ExportedProgram, `.pt2`) and `aoti` (an AOTInductor package).

`torch.export.load` in torch 2.13 is not pickle-free: weights or constants saved with
`use_pickle`, custom and opaque objects, legacy archives and sample inputs that fail
`weights_only=True` all reach `torch.load(weights_only=False)` or `pickle.loads`. `check_archive`
reads the archive's JSON configs first and refuses every one of those paths, so a file from the
store is only handed to torch when nothing in it would be unpickled.

An AOTInductor package is compiled native code for one torch build, CPU ISA or CUDA arch, so each
`aoti` artifact carries the environment it was built in; `environment_problem` says why a machine
cannot run it (the loader then falls back to another artifact).
"""

from __future__ import annotations

import functools
import io
import json
import platform
import sys
import sysconfig
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import StoreError
from .signature import Signature

Tensors = dict[str, np.ndarray[Any, Any]]


class ExportRefused(StoreError):
    """An export that torch could not produce; the publish lands the other formats without it."""


class NotRunnableHere(StoreError):
    """An artifact built for another machine (torch build, ISA, device); try the next one."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _export_program(model: torch.nn.Module, args: tuple[torch.Tensor, ...], fmt: str) -> Any:
    """One ExportedProgram with a dynamic batch (dim 0) on every input, as the ONNX export has."""
    batch = torch.export.Dim.DYNAMIC
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as e:  # torch.export raises many types (UserError, Unsupported, ...)
        raise ExportRefused(f"{fmt}: torch.export failed: {_first_line(e)}") from e


def export_exported(model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    program = _export_program(model, args, "exported")
    torch.export.save(program, str(path))


def export_aoti(model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    """Compile for the CPU with AOTInductor (tens of seconds), saying so: a publish should not look hung."""
    program = _export_program(model, args, "aoti")
    print("aoti: compiling an AOTInductor package for cpu (about 30 s on 2 cores)...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as e:  # a C++ compiler failure, an unsupported op, ...
        raise ExportRefused(f"aoti: compile failed: {_first_line(e)}") from e
    print(f"aoti: compiled in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


# ---- the environment an AOTInductor package needs --------------------------------------------
@functools.cache
def _cpu_isa() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the ISA inductor targets here, every ISA flag it could use here); probing compiles, so cached."""
    from torch._inductor import cpu_vec_isa

    picked = str(cpu_vec_isa.pick_vec_isa()).split()
    usable = sorted({flag for isa in cpu_vec_isa.valid_vec_isa_list() for flag in str(isa).split()})
    return tuple(picked), tuple(usable)


def build_environment(device: str = "cpu") -> dict[str, Any]:
    """What an AOTInductor package compiled now depends on (recorded in the manifest per artifact)."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "device": "cuda" if device.startswith("cuda") else "cpu",
        "arch": platform.machine(),
        "python_abi": sysconfig.get_config_var("SOABI") or sys.implementation.cache_tag,
    }
    if env["device"] == "cuda":
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        env["cuda"] = torch.version.cuda
        env["compute_capability"] = f"{major}.{minor}"
    else:
        env["cpu_isa"] = list(_cpu_isa()[0])
    return env


def machine_environment(device: str = "cpu") -> dict[str, Any]:
    """This machine, in the terms of `build_environment`, plus every ISA flag it supports."""
    env = build_environment(device)
    if env["device"] == "cpu":
        env["cpu_isa_supported"] = list(_cpu_isa()[1])
    return env


def environment_problem(recorded: Mapping[str, Any] | None, machine: Mapping[str, Any]) -> str | None:
    """Why a package built in `recorded` cannot run on `machine`, or None."""
    if not recorded:
        return "no build environment recorded"
    for key in ("torch", "arch", "python_abi", "device"):
        if recorded.get(key) != machine.get(key):
            return f"built for {key} {recorded.get(key)!r}, this machine has {machine.get(key)!r}"
    if machine.get("device") == "cuda":
        for key in ("cuda", "compute_capability"):
            if recorded.get(key) != machine.get(key):
                return f"built for {key} {recorded.get(key)!r}, this machine has {machine.get(key)!r}"
        return None
    missing = sorted(set(recorded.get("cpu_isa") or ()) - set(machine.get("cpu_isa_supported") or ()))
    if missing:
        return f"built for CPU ISA {' '.join(missing)}, which this CPU lacks"
    return None


# ---- loading ---------------------------------------------------------------------------------
def check_archive(path: Path) -> None:
    """Refuse a .pt2 whose loading would unpickle anything, before torch reads it."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            roots = {n.split("/", 1)[0] for n in names}
            if len(roots) != 1 or f"{next(iter(roots))}/archive_format" not in names:
                raise StoreError(f"{name}: not a torch.export archive (no archive_format)")
            root = next(iter(roots))
            if not any(n.startswith(f"{root}/models/") and n.endswith(".json") for n in names):
                raise StoreError(f"{name}: not an ExportedProgram (no models/*.json)")
            for n in names:
                rel = n[len(root) + 1 :]
                if rel.startswith("data/") and rel.endswith(".pt") and not rel.startswith("data/sample_inputs/"):
                    raise StoreError(f"{name}: {rel}: legacy pickled weights or constants are refused")
                if rel.startswith(("data/weights/", "data/constants/")) and rel.endswith("_config.json"):
                    _check_payload_config(name, rel, json.loads(z.read(n)))
                if rel.startswith("data/sample_inputs/"):
                    # torch retries these with weights_only=False; make sure it never has to
                    torch.load(io.BytesIO(z.read(n)), weights_only=True)
    except StoreError:
        raise
    except Exception as e:  # BadZipFile, a truncated member, JSON errors, an unsafe pickle
        raise StoreError(f"{name}: unreadable torch.export archive ({type(e).__name__}: {_first_line(e)})") from None


def _check_payload_config(name: str, rel: str, config: Any) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise StoreError(f"{name}: {rel}: malformed payload config")
    for fqn, meta in entries.items():
        if (
            not isinstance(meta, dict)
            or meta.get("use_pickle")
            or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_"))
        ):
            raise StoreError(f"{name}: {rel}: {fqn!r} is stored as a pickle or custom object, which is refused")


class ExportedRuntime:
    """An ExportedProgram's module, or an AOTInductor package, run on numpy tensors."""

    def __init__(self, fn: Any, signature: Signature, fmt: str, device: str) -> None:
        self.format, self.device, self._fn = fmt, device, fn
        self._inputs = [i.name for i in signature.inputs]
        self._outputs = [o.name for o in signature.outputs]

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Tensors:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self._inputs]
        with torch.inference_mode():
            out = self._fn(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self._outputs):
            raise StoreError(f"model returned {len(outs)} outputs, signature has {len(self._outputs)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self._outputs, outs, strict=True)}

    def describe(self) -> dict[str, str]:
        runtime = "torch.export" if self.format == "exported" else "aoti"
        return {"runtime": runtime, "torch": torch.__version__}


def load_exported(path: Path, signature: Signature, device: str = "cpu") -> ExportedRuntime:
    check_archive(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise StoreError(f"{path.name}: torch.export.load failed ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise StoreError(f"{path.name}: holds a {type(program).__name__}, not an ExportedProgram")
    module = program.module()
    if device != "cpu":
        module = module.to(device)
    return ExportedRuntime(module, signature, "exported", device)


def load_aoti(
    path: Path, signature: Signature, environment: Mapping[str, Any] | None, device: str = "cpu"
) -> ExportedRuntime:
    """Check the recorded environment against this machine first: a mismatched package may crash."""
    problem = environment_problem(environment, machine_environment(device))
    if problem:
        raise NotRunnableHere(f"cannot run here: {problem}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # a truncated or corrupted member, before a .so is dlopen'ed
        if bad is not None:
            raise StoreError(f"{path.name}: corrupted member {bad}")
        runner = torch._inductor.aoti_load_package(str(path))
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(
            f"{path.name}: not a loadable AOTInductor package ({type(e).__name__}: {_first_line(e)})"
        ) from None
    return ExportedRuntime(runner, signature, "aoti", device)
