"""Runtimes: one small interface to run a loaded artifact on numpy tensors.

The store runs them to check golden outputs; the server runs them to serve. Each takes and
returns `{name: ndarray}` in the manifest signature's names, so callers never see the framework.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import aoti
from .errors import StoreError, UntrustedPickle
from .manifest import ModelFactory
from .signature import Signature
from .torch_export import load_program

log = logging.getLogger(__name__)
Tensors = dict[str, np.ndarray[Any, Any]]


class Runtime(Protocol):
    """A loaded artifact that computes outputs from inputs; it does not manage its lifecycle."""

    format: str
    device: str

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Tensors: ...

    def describe(self) -> dict[str, str]: ...


class OnnxRuntime:
    """An ONNX artifact in an onnxruntime session (CUDA provider on a CUDA device when present)."""

    format = "onnx"

    def __init__(self, path: Path, signature: Signature, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise StoreError("onnxruntime has no CUDAExecutionProvider in this install")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        self.device = device
        self._session = ort.InferenceSession(str(path), opts, providers=providers)
        self._outputs = [o.name for o in signature.outputs]
        names = [i.name for i in self._session.get_inputs()]
        want = [i.name for i in signature.inputs]
        if names != want:
            raise StoreError(f"ONNX inputs {names} do not match the signature's {want}")

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Tensors:
        values = self._session.run(self._outputs, dict(inputs))
        return dict(zip(self._outputs, values, strict=True))

    def describe(self) -> dict[str, str]:
        return {"runtime": "onnxruntime", "providers": ",".join(self._session.get_providers())}


class TorchRuntime:
    """A TorchScript or eager module on a torch device."""

    def __init__(
        self, module: torch.nn.Module, signature: Signature, fmt: str, device: str = "cpu", eval_mode: bool = True
    ) -> None:
        self.format = fmt
        self.device = device
        # An exported program is traced in eval mode already and refuses `.eval()`.
        self._module = module.to(device).eval() if eval_mode else module.to(device)
        self._inputs = [i.name for i in signature.inputs]
        self._outputs = [o.name for o in signature.outputs]

    def predict(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> Tensors:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self._inputs]
        with torch.inference_mode():
            out = self._module(*args)
        if isinstance(out, Mapping):  # a dict of outputs (torchvision's {"out": ...}): by name
            out = tuple(out[n] for n in self._outputs) if set(self._outputs) <= set(out) else tuple(out.values())
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self._outputs):
            raise StoreError(f"model returned {len(outs)} outputs, signature has {len(self._outputs)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self._outputs, outs, strict=True)}

    def describe(self) -> dict[str, str]:
        return {"runtime": "torch", "torch": torch.__version__}


def model_factory(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
    """Mark a function as a model factory a manifest may name (classes need no mark)."""
    fn.__modeldock_factory__ = True  # type: ignore[attr-defined]
    return fn


def resolve_factory(target: str) -> Callable[..., torch.nn.Module]:
    """Import `module:callable`, refusing anything that is not a model factory.

    A manifest is data from the store: without this check `os:system` would be a factory.
    """
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise StoreError(f"model_factory {target!r} cannot be imported: {e}") from None
    is_module_class = inspect.isclass(obj) and issubclass(obj, torch.nn.Module)
    if not (is_module_class or getattr(obj, "__modeldock_factory__", False)):
        raise StoreError(
            f"model_factory {target!r} is neither a torch.nn.Module subclass nor a function "
            "marked with @model_store.model_factory"
        )
    return obj  # type: ignore[no-any-return]


def build_model(factory: ModelFactory) -> torch.nn.Module:
    model = resolve_factory(factory.callable)(**factory.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise StoreError(f"model_factory {factory.callable!r} returned {type(model).__name__}")
    return model


def load_state_dict(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A state_dict file, loaded without unpickling anything but tensors and containers."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or ValueError here
        raise StoreError(f"{path.name}: not a safe state_dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise StoreError(f"{path.name}: expected a state_dict, found {type(state).__name__}")
    return state


def load_runtime(
    fmt: str,
    path: Path,
    signature: Signature,
    *,
    device: str = "cpu",
    factory: ModelFactory | None = None,
    template: torch.nn.Module | None = None,
    trust_pickle: bool = False,
    threads: int | None = None,
    environment: Mapping[str, Any] | None = None,
) -> Runtime:
    """Load one artifact for `device`. A pickle loads only when `trust_pickle` is set.

    `template` stands in for the factory when a state_dict was published without one (the
    publisher still holds the live model). `environment` is an aoti artifact's build record.
    """
    if fmt == "onnx":
        return OnnxRuntime(path, signature, device, threads)
    if threads:
        torch.set_num_threads(threads)
    if fmt == "aoti":
        return aoti.load_aoti(path, signature, environment, device)
    if fmt == "torchscript":
        module: torch.nn.Module = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    elif fmt == "exported":
        return TorchRuntime(load_program(path, device), signature, fmt, device, eval_mode=False)
    elif fmt == "state_dict":
        if factory is None and template is None:
            raise StoreError("not servable: no model_factory to rebuild the model")
        module = build_model(factory) if factory is not None else template  # type: ignore[assignment]
        module.load_state_dict(load_state_dict(path, device))
    elif fmt == "pickle":
        if not trust_pickle:
            raise UntrustedPickle(
                f"{path.name} is a full-model pickle, which runs code when loaded; "
                "set trust_pickle only for stores whose writers you trust"
            )
        log.warning("loading trusted pickle %s", path)
        module = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(module, torch.nn.Module):
            raise StoreError(f"{path.name}: the pickle holds a {type(module).__name__}, not a torch.nn.Module")
    else:
        raise StoreError(f"unknown format {fmt!r}")
    return TorchRuntime(module, signature, fmt, device)
