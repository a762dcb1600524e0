"""Reading a TorchServe model archive (`.mar`, made by `torch-model-archiver`) as data.

A `.mar` is a zip: `MAR-INF/MANIFEST.json` names the model, its serialized file, the model file
(eager mode), the handler and a requirements file; extra files sit beside them. Nothing from an
archive is ever imported or unpickled here (TorchServe's own loader runs the archive's Python,
which is what made ShellTorch possible): members are checked, extracted within size limits and
classified by their bytes.
"""

from __future__ import annotations

import ast
import json
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import StoreError

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
MAX_MEMBER_BYTES = 8 << 30  # one member (a large model's weights fit)
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO = 200  # a member that inflates more than this from over 1 MiB is a zip bomb
MAX_MEMBERS = 10_000
# TorchServe's built-in handlers, by the name a manifest gives them.
BUILTIN_HANDLERS = ("image_classifier", "text_classifier", "object_detector", "image_segmenter", "base_handler")


class ArchiveError(StoreError):
    """The file is not a `.mar` this importer can read; the message names the member and check."""


@dataclass(frozen=True)
class MarArchive:
    """An archive extracted into `folder`: what its manifest says and what its files are."""

    path: Path
    folder: Path
    model_name: str
    model_version: str
    serialized: Path
    kind: str  # "torchscript", "onnx" or "eager"
    handler: str  # a built-in name, a file of the archive, or "" for none
    model_file: Path | None = None
    requirements: Path | None = None
    extra_files: tuple[Path, ...] = ()
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def custom_handler(self) -> bool:
        return bool(self.handler) and self.handler not in BUILTIN_HANDLERS

    def model_classes(self) -> list[str]:
        """The classes the eager model file defines, read from its syntax tree (never run)."""
        if self.model_file is None:
            return []
        try:
            tree = ast.parse(self.model_file.read_text(), str(self.model_file.name))
        except (SyntaxError, UnicodeDecodeError, ValueError) as e:
            raise ArchiveError(f"{self.path.name}: model file {self.model_file.name!r} is not Python: {e}") from None
        return [node.name for node in tree.body if isinstance(node, ast.ClassDef)]


def _member_path(info: zipfile.ZipInfo, archive: str) -> PurePosixPath:
    name = info.filename
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or (parts and ":" in parts[0]):
        raise ArchiveError(f"{archive}: member {name!r} escapes the archive (absolute or '..' path)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(f"{archive}: member {name!r} is a symbolic link")
    return PurePosixPath(*parts)


def _check_sizes(infos: list[zipfile.ZipInfo], archive: str) -> None:
    if len(infos) > MAX_MEMBERS:
        raise ArchiveError(f"{archive}: {len(infos)} members, over the limit of {MAX_MEMBERS}")
    total = 0
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise ArchiveError(f"{archive}: member {info.filename!r} of {info.file_size} bytes is over the limit")
        if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveError(
                f"{archive}: member {info.filename!r} inflates {info.file_size // max(info.compress_size, 1)}x "
                f"(over {MAX_RATIO}x: a zip bomb?)"
            )
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{archive}: {total} bytes uncompressed, over the limit of {MAX_TOTAL_BYTES}")


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: str) -> None:
    """Copy one member, trusting the bytes read rather than the size its header declares."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise ArchiveError(f"{archive}: member {info.filename!r} is longer than its header says")
            dst.write(chunk)


def _field(model: dict[str, Any], key: str, archive: str, required: bool = True) -> str:
    value = model.get(key)
    if value is None or value == "":
        if required:
            raise ArchiveError(f"{archive}: {MANIFEST_PATH} has no model.{key}")
        return ""
    if not isinstance(value, str):
        raise ArchiveError(f"{archive}: {MANIFEST_PATH}: model.{key} must be a string, got {type(value).__name__}")
    return value


def _named_file(folder: Path, value: str, key: str, archive: str) -> Path:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(f"{archive}: model.{key} {value!r} points outside the archive")
    found = folder / path
    if not found.is_file():
        raise ArchiveError(f"{archive}: model.{key} names {value!r}, which the archive does not hold")
    return found


def classify(serialized: Path, model_file: Path | None) -> str:
    """TorchScript, ONNX or an eager state_dict, from the file's bytes and the manifest."""
    if serialized.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(serialized):
        with zipfile.ZipFile(serialized) as zf:
            names = zf.namelist()
        # torch.jit.save writes code/ and constants.pkl; torch.save writes neither.
        if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
            return "torchscript"
    if model_file is not None:
        return "eager"
    raise ArchiveError(
        f"serialized file {serialized.name!r} is neither TorchScript nor ONNX, and the archive has no model "
        "file naming its class (an eager archive needs --model-file)"
    )


def read_mar(path: Path, folder: Path) -> MarArchive:
    """Check and extract the archive at `path` into the empty `folder`; ArchiveError says why not."""
    archive = path.name
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ArchiveError(f"{archive}: not a zip archive, so not a .mar")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            members = {_member_path(i, archive).as_posix(): i for i in infos}
            if MANIFEST_PATH not in members:
                raise ArchiveError(f"{archive}: no {MANIFEST_PATH} (not made by torch-model-archiver?)")
            _check_sizes(infos, archive)
            for name, info in members.items():
                _extract(zf, info, folder / name, archive)
    except zipfile.BadZipFile as e:
        raise ArchiveError(f"{archive}: damaged zip: {e}") from None
    try:
        manifest = json.loads((folder / MANIFEST_PATH).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArchiveError(f"{archive}: {MANIFEST_PATH} is not JSON: {e}") from None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ArchiveError(f"{archive}: {MANIFEST_PATH} has no 'model' object")
    name = _field(model, "modelName", archive)
    serialized = _named_file(folder, _field(model, "serializedFile", archive), "serializedFile", archive)
    model_file_name = _field(model, "modelFile", archive, required=False)
    model_file = _named_file(folder, model_file_name, "modelFile", archive) if model_file_name else None
    requirements_name = _field(model, "requirementsFile", archive, required=False)
    requirements = _named_file(folder, requirements_name, "requirementsFile", archive) if requirements_name else None
    handler = _field(model, "handler", archive, required=False)
    try:
        kind = classify(serialized, model_file)
    except ArchiveError as e:
        raise ArchiveError(f"{archive}: {e}") from None
    own = {MANIFEST_PATH, serialized.relative_to(folder).as_posix()}
    for extra in (model_file, requirements):
        if extra is not None:
            own.add(extra.relative_to(folder).as_posix())
    if handler.split(":")[0].endswith(".py"):
        own.add(handler.split(":")[0])
    extras = tuple(folder / n for n in sorted(members) if n not in own and not n.startswith("MAR-INF/"))
    return MarArchive(
        path=path,
        folder=folder,
        model_name=name,
        model_version=_field(model, "modelVersion", archive, required=False) or "1.0",
        serialized=serialized,
        kind=kind,
        handler=handler,
        model_file=model_file,
        requirements=requirements,
        extra_files=extras,
        manifest=manifest,
    )


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
