"""The version manifest (`manifest.json`): its typed form, parsing and writing.

The format is documented in docs/store-format.md; `manifest.schema.json` beside this module is
its JSON Schema. Parsing here checks the same rules by hand so the library needs no validator.

`schema_version` rule: a manifest says the lowest schema that describes it (1 without data files,
so every release reads it; 2 with them). This code reads 1 to SCHEMA_VERSION and refuses a newer
one with `NewerManifest` rather than guess at fields it does not know.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ManifestError, NewerManifest
from .signature import Signature

SCHEMA_VERSION = 3  # the newest schema this code reads and writes
DATA_FILES_SCHEMA = 2  # the first schema with `data_files`
AOTI_SCHEMA = 3  # the first schema with `aoti` artifacts and their `environment`
MANIFEST_NAME = "manifest.json"
FORMATS = ("onnx", "torchscript", "exported", "state_dict", "pickle", "aoti")
AOTI_FORMATS = ("aoti",)  # compiled code with a build `environment`: schema 3
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A data file is one plain file of the version folder: no subfolders, no hidden names (the S3
# mirror keeps its own records as dot-files there).
DATA_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class FileEntry:
    """A file of the version, relative to its folder, with the size and sha256 it must have."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Artifact(FileEntry):
    """A model file in one format."""

    format: str = "onnx"
    environment: dict[str, Any] | None = None  # what compiled code needs (aoti): torch, ISA, device

    def to_dict(self) -> dict[str, Any]:
        d = {"format": self.format, **super().to_dict()}
        if self.environment is not None:
            d["environment"] = self.environment
        return d


@dataclass(frozen=True)
class Examples(FileEntry):
    """The example inputs and their golden outputs, with the tolerance exports must meet."""

    atol: float = 1e-4
    rtol: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "atol": self.atol, "rtol": self.rtol}


@dataclass(frozen=True)
class DataFile(FileEntry):
    """A plain data file a handler may read (labels, vocabulary): checksummed, never executed."""


@dataclass(frozen=True)
class ModelFactory:
    """`module:callable` and JSON keyword arguments that rebuild the model for a state_dict."""

    callable: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"callable": self.callable, "kwargs": self.kwargs}


@dataclass(frozen=True)
class Manifest:
    """Everything the server needs to know about one version, and the means to verify it."""

    name: str
    version: int
    created_at: str
    artifacts: tuple[Artifact, ...]
    signature: Signature
    examples: Examples
    metrics: dict[str, float] = field(default_factory=dict)
    model_factory: ModelFactory | None = None
    framework: dict[str, Any] = field(default_factory=dict)
    parameter_count: int = 0
    training: dict[str, Any] | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    data_files: tuple[DataFile, ...] = ()

    @property
    def schema_version(self) -> int:
        """The lowest schema that describes this manifest, so older releases read what they can."""
        if any(a.format in AOTI_FORMATS for a in self.artifacts):
            return AOTI_SCHEMA  # an older release would not know the format: it says "upgrade"
        return DATA_FILES_SCHEMA if self.data_files else 1

    @property
    def files(self) -> tuple[FileEntry, ...]:
        """Every file the version consists of: artifacts, examples and data files. Each is
        checksummed, mirrored and waited for (pending) alike."""
        return (*self.artifacts, self.examples, *self.data_files)

    def artifact(self, fmt: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.format == fmt), None)

    def data_file(self, name: str) -> DataFile | None:
        """The data file listed under `name`, or None when this version has none by that name."""
        return next((f for f in self.data_files if f.path == name), None)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "signature": self.signature.to_dict(),
            "examples": self.examples.to_dict(),
            "metrics": self.metrics,
            "model_factory": self.model_factory.to_dict() if self.model_factory else None,
            "framework": self.framework,
            "parameter_count": self.parameter_count,
        }
        for key in ("training", "description"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.tags:
            d["tags"] = list(self.tags)
        if self.data_files:
            d["data_files"] = [f.to_dict() for f in self.data_files]
        return d

    def dump(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_NAME
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # reading a FIFO would block forever
                raise ManifestError(f"{path}: not a regular file")
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"{path}: no manifest") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path}: unreadable manifest: {e}") from None
        try:
            return cls.from_dict(raw)
        except NewerManifest as e:
            raise NewerManifest(f"{path}: {e}") from None
        except (ValueError, TypeError, KeyError) as e:
            raise ManifestError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        if not isinstance(d, dict):
            raise ValueError("manifest must be a JSON object")
        schema = _schema_version(d.get("schema_version"))
        artifacts = tuple(_artifact(a) for a in _list(d, "artifacts"))
        if not artifacts:
            raise ValueError("'artifacts' is empty")
        data_files = tuple(_data_file(f) for f in (_list(d, "data_files") if "data_files" in d else ()))
        if data_files and schema < DATA_FILES_SCHEMA:
            # An older release would read this manifest and skip the files' checksums.
            raise ValueError(f"'data_files' needs schema_version {DATA_FILES_SCHEMA}, the manifest says {schema}")
        if schema < AOTI_SCHEMA and any(a.format in AOTI_FORMATS for a in artifacts):
            raise ValueError(
                f"formats {list(AOTI_FORMATS)} need schema_version {AOTI_SCHEMA}, the manifest says {schema}"
            )
        factory = d.get("model_factory")
        examples = _examples(_dict(d, "examples"))
        paths = [f.path for f in (*artifacts, examples, *data_files)]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"file {twice[0]!r} is listed twice")
        return cls(
            name=_str(d, "name"),
            version=_int(d, "version"),
            created_at=_str(d, "created_at"),
            artifacts=artifacts,
            signature=Signature.from_dict(_dict(d, "signature")),
            examples=examples,
            metrics={str(k): _number(v, f"metric {k!r}") for k, v in _dict(d, "metrics").items()},
            model_factory=None if factory is None else _factory(factory),
            framework=dict(d.get("framework") or {}),
            parameter_count=int(d.get("parameter_count") or 0),
            training=d.get("training"),
            description=d.get("description"),
            tags=tuple(str(t) for t in d.get("tags") or ()),
            data_files=data_files,
        )


def _schema_version(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"schema_version {v!r} is not a positive integer")
    if v > SCHEMA_VERSION:
        raise NewerManifest(
            f"schema_version {v} is newer than this modeldock understands (it reads 1 to {SCHEMA_VERSION}): "
            "upgrade modeldock to serve this version"
        )
    return v


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise ValueError(f"'{key}' must be a non-empty string, got {v!r}")
    return v


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"'{key}' must be a non-negative integer, got {v!r}")
    return v


def _number(v: Any, what: str) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ValueError(f"{what} must be a number, got {v!r}")
    return float(v)


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    v = d.get(key)
    if not isinstance(v, list):
        raise ValueError(f"'{key}' must be a list")
    return v


def _dict(d: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key, {} if key == "metrics" else None)
    if not isinstance(v, dict):
        raise ValueError(f"'{key}' must be an object")
    return v


def _file_fields(d: Mapping[str, Any]) -> tuple[str, str, int]:
    path = _str(d, "path")
    if path.startswith(("/", "\\")) or ".." in Path(path).parts or path == MANIFEST_NAME:
        raise ValueError(f"file path {path!r} must be relative and stay inside the version folder")
    sha = _str(d, "sha256")
    if not _SHA256.match(sha):
        raise ValueError(f"{path}: sha256 must be 64 lowercase hex digits")
    return path, sha, _int(d, "size")


def _artifact(d: Any) -> Artifact:
    if not isinstance(d, dict):
        raise ValueError("each artifact must be an object")
    fmt = d.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"artifact format {fmt!r} is not one of {list(FORMATS)}")
    env = d.get("environment")
    if env is not None and not isinstance(env, dict):
        raise ValueError("artifact 'environment' must be an object")
    return Artifact(*_file_fields(d), format=str(fmt), environment=env)


def _examples(d: Mapping[str, Any]) -> Examples:
    return Examples(
        *_file_fields(d),
        atol=_number(d.get("atol", 1e-4), "examples.atol"),
        rtol=_number(d.get("rtol", 1e-3), "examples.rtol"),
    )


def _data_file(d: Any) -> DataFile:
    if not isinstance(d, dict):
        raise ValueError("each data file must be an object")
    path, sha, size = _file_fields(d)
    if not DATA_FILE_NAME.match(path):
        raise ValueError(
            f"data file {path!r} must be a plain file name: letters, digits, '_', '.' or '-', not starting with '.'"
        )
    return DataFile(path, sha, size)


def _factory(d: Any) -> ModelFactory:
    if not isinstance(d, dict):
        raise ValueError("'model_factory' must be an object or null")
    target = _str(d, "callable")
    if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", target):
        raise ValueError(f"model_factory.callable {target!r} must look like 'module:callable'")
    kwargs = d.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError("model_factory.kwargs must be an object")
    return ModelFactory(target, kwargs)
