"""`modeldock import-mar`: a TorchServe model archive in, a verified store version out.

The archive is read as data (`mar.read_mar`): a TorchScript or ONNX serialized file lands as it is,
with golden outputs computed from it; an eager archive's state_dict is loaded (tensors only) into
a model class the user names from their own installed package, after checking that the archive's
model file defines a class of that name. Code inside an archive is never imported or run.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import StoreError
from .mar import BUILTIN_HANDLERS, ArchiveError, MarArchive, read_mar, remove
from .publish import DataSource
from .runtimes import load_state_dict, resolve_factory
from .store import ModelStore, check_name

# modeldock handlers giving the responses of TorchServe's built-in handlers of the same name.
HANDLERS = {"image_classifier": "server.handlers.torchserve:ImageClassifier"}
IMAGE_HANDLERS = ("image_classifier", "object_detector", "image_segmenter")
IMAGE_EXAMPLE_SHAPE = (2, 3, 224, 224)  # what torchvision's image handlers feed the model, two rows
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}  # fmt: skip


@dataclass
class ImportReport:
    """What landed, and what the user still has to do by hand."""

    name: str
    version: int
    kind: str  # the archive's serialized file: torchscript, onnx or eager
    formats: tuple[str, ...]
    handler: str  # the modeldock handler to serve it with, "" for none
    data_files: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)

    def serve_yaml(self) -> str:
        lines = ["models:", f"  {self.name}:"]
        lines.append(f"    handler: {self.handler}" if self.handler else "    {}")
        return "\n".join(lines) + "\n"


def load_example(path: Path) -> tuple[torch.Tensor, ...]:
    """Example inputs from a `.npy` (one array) or a `.pt` (a tensor or a list of them), tensors only."""
    try:
        if path.suffix == ".npy":
            return (torch.from_numpy(np.load(path, allow_pickle=False)),)
        if path.suffix == ".pt":
            value = torch.load(path, map_location="cpu", weights_only=True)
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if values and all(isinstance(v, torch.Tensor) for v in values):
                return values
            raise StoreError(f"example input {path.name}: expected a tensor or a list of tensors")
    except (OSError, ValueError, RuntimeError) as e:
        raise StoreError(f"example input {path}: cannot be read: {str(e).splitlines()[0]}") from None
    raise StoreError(f"example input {path.name}: expected a .npy or .pt file")


def _onnx_example(path: Path) -> tuple[torch.Tensor, ...] | None:
    """Inputs from an ONNX model's declared shapes: a symbolic first dimension becomes 2 rows,
    any other symbolic dimension means the shape cannot be guessed."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types
        raise StoreError(f"{path.name} is not an ONNX model onnxruntime can load: {str(e).splitlines()[0]}") from None
    out = []
    rng = np.random.default_rng(0)
    for i in session.get_inputs():
        dims = [2 if k == 0 and not isinstance(d, int) else d for k, d in enumerate(i.shape)]
        dtype = _ONNX_DTYPES.get(i.type)
        if dtype is None or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        out.append(torch.from_numpy(rng.random(dims).astype(dtype)))
    return tuple(out)


def example_inputs(mar: MarArchive, given: Path | None) -> tuple[torch.Tensor, ...]:
    if given is not None:
        return load_example(given)
    if mar.kind == "onnx" and (found := _onnx_example(mar.serialized)) is not None:
        return found
    if mar.handler in IMAGE_HANDLERS:
        return (torch.rand(*IMAGE_EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0)),)
    raise StoreError(
        f"{mar.path.name}: the example inputs cannot be derived (handler {mar.handler or 'none'!r}, "
        f"{mar.kind} model): give --example-input FILE, a .npy array or a .pt tensor (or list of tensors) "
        "with a batch of what the model takes, for the golden outputs"
    )


def _eager_model(mar: MarArchive, model_class: str | None) -> torch.nn.Module:
    classes = mar.model_classes()
    assert mar.model_file is not None
    if model_class is None:
        raise StoreError(
            f"{mar.path.name} is an eager archive: its model file {mar.model_file.name} defines "
            f"{classes or 'no class'}. modeldock never runs code from an archive: copy that file into a "
            f"package of yours and pass --model-class yourpkg.module:{classes[0] if classes else 'Class'}"
        )
    if ":" not in model_class:
        raise StoreError(f"--model-class {model_class!r} must be 'package.module:Class'")
    if model_class.rpartition(":")[2].split(".")[-1] not in classes:
        raise StoreError(
            f"--model-class {model_class!r}: the archive's {mar.model_file.name} defines {classes}, not that class"
        )
    cls = resolve_factory(model_class)  # an importable torch.nn.Module subclass, or refused
    try:
        model = cls()  # TorchServe builds the class with no arguments too
    except Exception as e:
        raise StoreError(f"--model-class {model_class!r} cannot be built with no arguments: {e}") from None
    state = load_state_dict(mar.serialized)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise StoreError(f"{mar.serialized.name} does not fit {model_class}: {first}") from None
    return model


def _data_files(mar: MarArchive, report: ImportReport) -> dict[str, DataSource]:
    files: dict[str, DataSource] = {}
    for path in mar.extra_files:
        rel = path.relative_to(mar.folder).as_posix()
        if path.suffix == ".py":
            report.todo.append(f"extra file {rel} is Python: it is not carried (install code in your own package)")
        elif "/" in rel or not _PLAIN_NAME.match(rel):
            report.todo.append(f"extra file {rel} is not a plain file name: not carried as a data file")
        else:
            files[rel] = path
    return files


def _requirements(mar: MarArchive, report: ImportReport) -> None:
    if mar.requirements is None:
        return
    for line in mar.requirements.read_text(errors="replace").splitlines():
        req = line.split("#")[0].strip()
        if not req or req.startswith("-"):
            continue
        dist = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            report.todo.append(f"requirement {req!r} of the archive is not installed here (install it in the image)")


def _handler(mar: MarArchive, report: ImportReport) -> None:
    if mar.handler in HANDLERS:
        report.handler = HANDLERS[mar.handler]
    elif mar.handler in BUILTIN_HANDLERS and mar.handler != "base_handler":
        report.todo.append(
            f"TorchServe's {mar.handler} has no modeldock handler yet: write one (docs/torchserve.md shows a port)"
        )
    elif mar.custom_handler:
        report.todo.append(
            f"custom handler {mar.handler}: port its preprocess/postprocess to a modeldock Handler in your "
            "package (docs/torchserve.md, 'Porting a handler'); the archive's copy is not run"
        )


def import_mar(
    store: ModelStore,
    archive: str | Path,
    *,
    name: str | None = None,
    example_input: str | Path | None = None,
    model_class: str | None = None,
    formats: tuple[str, ...] | None = None,
) -> ImportReport:
    """Publish the archive's model as a new version of `name` (default: its model name)."""
    path = Path(archive)
    folder = Path(tempfile.mkdtemp(prefix="modeldock-mar-"))
    try:
        mar = read_mar(path, folder)
        target = name or mar.model_name
        try:
            check_name(target)
        except StoreError as e:
            raise StoreError(f"{e} (the archive's model name; choose another with --name)") from None
        report = ImportReport(target, 0, mar.kind, (), "")
        _handler(mar, report)
        _requirements(mar, report)
        data = _data_files(mar, report)
        report.data_files = sorted(data)
        args = example_inputs(mar, Path(example_input) if example_input is not None else None)
        meta: dict[str, Any] = {
            "description": f"imported from TorchServe archive {path.name} (model version {mar.model_version})",
            "tags": ("torchserve",),
        }
        if mar.kind == "eager":
            model = _eager_model(mar, model_class)
            assert model_class is not None
            if class_source_differs(model_class, mar):
                report.todo.append(
                    f"{model_class} differs from the class in the archive's model file: check it is the revision it was trained with"
                )
            report.formats = formats or ("state_dict",)
            report.version = store.publish(
                target, model, example_inputs=args, formats=report.formats, model_factory=model_class,
                data_files=data, **meta,
            )  # fmt: skip
        else:
            if formats not in (None, (mar.kind,)):
                raise StoreError(f"a {mar.kind} archive lands as {mar.kind} only, not {formats}")
            report.formats = (mar.kind,)
            report.version = store.publish_artifact(
                target, mar.kind, mar.serialized, example_inputs=args, data_files=data, **meta
            )
        return report
    except ArchiveError:
        raise
    except StoreError as e:
        raise StoreError(f"{path.name}: {e}" if not str(e).startswith(path.name) else str(e)) from None
    finally:
        remove(folder)


def class_source_differs(model_class: str, mar: MarArchive) -> bool:
    """Whether the installed class's source differs from the archive's class of that name (a hint
    that the user copied another revision of the model file)."""
    import ast

    cls = resolve_factory(model_class)
    assert mar.model_file is not None
    tree = ast.parse(mar.model_file.read_text())
    mine = [ast.dump(n) for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__]
    try:
        theirs = ast.dump(ast.parse(inspect.getsource(cls)).body[0])
    except (OSError, TypeError):
        return False
    return bool(mine) and mine[0] != theirs
