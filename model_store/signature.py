"""Tensor signatures with Open Inference Protocol datatypes, and their numpy/torch mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Open Inference Protocol datatype -> numpy dtype (BYTES is not a numeric tensor: not served here).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol datatype name of a numpy dtype."""
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: datatype and shape, -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        return DATATYPES[self.datatype]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        name, datatype, shape = d.get("name"), d.get("datatype"), d.get("shape")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor spec needs a non-empty 'name', got {name!r}")
        if datatype not in DATATYPES:
            raise ValueError(f"tensor {name!r}: datatype {datatype!r} is not one of {sorted(DATATYPES)}")
        if not isinstance(shape, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= -1 for x in shape
        ):
            raise ValueError(f"tensor {name!r}: shape must be a list of ints >= -1, got {shape!r}")
        return cls(name, str(datatype), tuple(shape))

    def mismatch(self, array: np.ndarray[Any, Any]) -> str | None:
        """Why `array` does not fit this spec, or None when it does."""
        if array.dtype != self.dtype:
            return f"tensor {self.name!r}: expected {self.datatype}, got {datatype_or(array)}"
        if len(array.shape) != len(self.shape) or any(
            want not in (-1, got) for want, got in zip(self.shape, array.shape, strict=True)
        ):
            return f"tensor {self.name!r}: expected shape {list(self.shape)}, got {list(array.shape)}"
        return None


def datatype_or(array: np.ndarray[Any, Any]) -> str:
    try:
        return datatype_of(array.dtype)
    except ValueError:
        return str(array.dtype)


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, in call order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        ins, outs = d.get("inputs"), d.get("outputs")
        if not isinstance(ins, list) or not ins or not isinstance(outs, list) or not outs:
            raise ValueError("signature needs non-empty 'inputs' and 'outputs' lists")
        sig = cls(
            tuple(TensorSpec.from_dict(t) for t in ins),
            tuple(TensorSpec.from_dict(t) for t in outs),
        )
        names = [t.name for t in sig.inputs + sig.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"signature names must be unique, got {names}")
        return sig

    @classmethod
    def from_examples(
        cls,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Mapping[str, np.ndarray[Any, Any]],
    ) -> Signature:
        """Infer a signature from example tensors; the first dimension is the dynamic batch."""

        def spec(name: str, a: np.ndarray[Any, Any]) -> TensorSpec:
            return TensorSpec(name, datatype_of(a.dtype), (-1, *a.shape[1:]))

        return cls(
            tuple(spec(n, a) for n, a in inputs.items()),
            tuple(spec(n, a) for n, a in outputs.items()),
        )

    def check(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Mapping[str, np.ndarray[Any, Any]],
    ) -> list[str]:
        """Problems with example tensors against this signature (empty when they fit)."""
        problems: list[str] = []
        for specs, arrays, kind in (
            (self.inputs, inputs, "input"),
            (self.outputs, outputs, "output"),
        ):
            if [s.name for s in specs] != list(arrays):
                problems.append(f"example {kind}s {list(arrays)} do not match signature {[s.name for s in specs]}")
                continue
            problems += [p for s in specs if (p := s.mismatch(arrays[s.name])) is not None]
        return problems


def names_for(prefix: str, count: int, given: Sequence[str] | None) -> list[str]:
    """Tensor names: the given ones, else `prefix` for one tensor or `prefix_i` for several."""
    if given is not None:
        if len(given) != count:
            raise ValueError(f"expected {count} {prefix} names, got {len(given)}")
        return list(given)
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]
