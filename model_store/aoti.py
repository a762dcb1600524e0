"""The `aoti` format: an AOTInductor package (`torch._inductor.aoti_compile_and_package`).

A package is compiled native code for one torch build, Python ABI, CPU ISA or CUDA arch, so each
`aoti` artifact carries the environment it was built in (`environment` in the manifest).
`environment_problem` says why a machine cannot run one; the loader then falls back to the next
artifact rather than dlopen a library that may crash the worker. Loading a package runs its
native code: it is trusted as the store's writers are, after its sha256 matched.
"""

from __future__ import annotations

import functools
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

from .errors import ExportRefused, NotRunnableHere, StoreError
from .signature import Signature

Tensors = dict[str, np.ndarray[Any, Any]]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def export_aoti(model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    """torch.export with a dynamic batch, then AOTInductor for the CPU (tens of seconds: said so)."""
    batch = torch.export.Dim.DYNAMIC
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as e:  # torch.export raises many types; the first line says which construct
        raise ExportRefused(f"aoti: torch.export failed: {_first_line(e)}") from e
    print("aoti: compiling an AOTInductor package for cpu (about 30 s on 2 cores)...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as e:  # a C++ compiler failure, an op inductor cannot lower, ...
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


class AotiRuntime:
    """A loaded AOTInductor package run on numpy tensors."""

    format = "aoti"

    def __init__(self, runner: Any, signature: Signature, device: str) -> None:
        self.device, self._runner = device, runner
        self._inputs = [i.name for i in signature.inputs]
        self._outputs = [o.name for o in signature.outputs]

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Tensors:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self._inputs]
        with torch.inference_mode():
            out = self._runner(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self._outputs):
            raise StoreError(f"model returned {len(outs)} outputs, signature has {len(self._outputs)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self._outputs, outs, strict=True)}

    def describe(self) -> dict[str, str]:
        return {"runtime": "aoti", "torch": torch.__version__}


def load_aoti(
    path: Path, signature: Signature, environment: Mapping[str, Any] | None, device: str = "cpu"
) -> AotiRuntime:
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
    return AotiRuntime(runner, signature, device)
