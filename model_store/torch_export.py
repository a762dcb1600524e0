"""The `exported` format: a `torch.export` ExportedProgram (`.pt2`), PyTorch's successor to
TorchScript, saved with a dynamic batch dimension and loaded without unpickling anything.

`torch.export.load` (torch 2.13) unpickles in four places: weights and tensor constants marked
`use_pickle` (`torch.load(weights_only=False)`), custom-object and opaque constants
(`torch._C._pickle_load_obj`, `pickle.loads`), and the sample inputs and legacy weight files when
`weights_only=True` fails (it then retries with `weights_only=False`). `check_pt2` reads the
archive first and refuses each of those, so what reaches `torch.export.load` is JSON, raw tensor
bytes and sample inputs that load as plain tensors.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import ExportRefused, StoreError

_CONFIG_SUFFIXES = ("_weights_config.json", "_constants_config.json")


def export_program(model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    """`torch.export.export` with the first dimension of every input dynamic, then saved."""
    batch = torch.export.Dim.DYNAMIC
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args))
    except Exception as e:  # torch.export raises many types; the first line says which construct
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportRefused(f"exported: torch.export failed: {first}") from e
    torch.export.save(program, str(path))


def _refuse(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path.name}: {why}; it would be unpickled on load, which runs code (re-export with torch.export.save)"
    )


def check_pt2(path: Path) -> None:
    """Refuse a `.pt2` that is not an ExportedProgram archive or that holds anything pickled."""
    if not zipfile.is_zipfile(path):
        raise StoreError(f"{path.name}: not a torch.export program (not a .pt2 zip archive)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if not any(n.endswith("/archive_format") for n in names) or not any("/models/" in n for n in names):
            raise StoreError(f"{path.name}: not a torch.export program (no archive_format or models/ member)")
        for name in names:
            parts = name.split("/")
            if (
                len(parts) >= 4
                and parts[-3] == "data"
                and parts[-2] in ("weights", "constants")
                and name.endswith(".pt")
            ):
                raise _refuse(path, f"member {name} is a legacy pickled {parts[-2]} file")
            if name.endswith(_CONFIG_SUFFIXES):
                _check_config(path, name, zf.read(name))
            if "/data/sample_inputs/" in name:
                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                except Exception:
                    raise _refuse(path, f"member {name} (sample inputs) is not plain tensors") from None


def _check_config(path: Path, name: str, raw: bytes) -> None:
    try:
        config: Any = json.loads(raw).get("config", {})
    except (ValueError, AttributeError):
        raise StoreError(f"{path.name}: member {name} is not the JSON torch.export writes") from None
    if not isinstance(config, dict):
        raise StoreError(f"{path.name}: member {name} is not the JSON torch.export writes")
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            raise StoreError(f"{path.name}: member {name}: entry {fqn!r} is malformed")
        if meta.get("use_pickle"):
            raise _refuse(path, f"{fqn!r} is stored pickled")
        file = str(meta.get("path_name", ""))
        if name.endswith("_constants_config.json") and not file.startswith("tensor_"):
            raise _refuse(path, f"constant {fqn!r} is a Python object ({file})")


def load_program(path: Path, device: str = "cpu") -> torch.nn.Module:
    """The program's module on `device`, after `check_pt2`."""
    check_pt2(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.export.load(str(path)).module()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(f"{path.name}: torch.export.load failed: {first}") from None
    return module.to(device)
