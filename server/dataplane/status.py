"""Health, readiness and metadata, read from the board: the same answers on every protocol.

Each call returns plain data or raises a ServingError (404 for a model or version not served,
503 for one not ready); REST writes it as JSON, gRPC as its protobuf messages.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

from ..config import ModelConfig
from ..errors import not_found, unavailable
from ..ipc.board import Board
from ..ipc.messages import WorkerRecord
from ..protocol import is_count
from .directory import ModelDirectory

_RANK = {"ready": 0, "loading": 1, "available": 2}  # a model loaded on demand: its best state first
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository_versions",
    "golden_output_validation",
    "modeldock_version_labels",  # /v2/models/<m>/labels/<label>/{infer,ready} (docs/versions.md)
    "model_configuration",  # Triton's: /v2/models/<m>[/versions/<v>]/config
    "statistics",  # Triton's: /v2/models[/<m>[/versions/<v>]]/stats
]


@dataclass
class ModelMetadata:
    """The Open Inference Protocol's model metadata, plus our `properties` (REST only)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    properties: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": self.versions,
            "platform": self.platform,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "properties": self.properties,
        }


class ServingStatus:
    """What the board says about the models this process serves."""

    def __init__(self, directory: ModelDirectory[Any], board: Board) -> None:
        self.directory, self.board = directory, board

    @property
    def models(self) -> dict[str, ModelConfig]:
        """The models served now (those of the config and those added while serving)."""
        return self.directory.models

    def records(self, name: str) -> list[WorkerRecord]:
        """One per worker of the model; for a model loaded on demand (held by some pool workers
        only), the most ready first: what it answers with is what readiness and metadata show."""
        records = self.board.records(name, self.directory.workers(name))
        if self.directory.on_demand(name):
            records.sort(key=lambda r: _RANK.get(str(r.get("state")), len(_RANK)))
        return records

    def check_served(self, name: str) -> None:
        """404 for a model not served now, saying why (removed, or never known)."""
        if name not in self.models:
            gone = self.directory.removed_reason(name)
            why = f"model {name!r} is not served: {gone}" if gone else f"unknown model {name!r}"
            raise not_found(f"{why}; serving {sorted(self.models)}")

    # ---- readiness ---------------------------------------------------------------------------
    def ready(self, name: str, version: int | None = None) -> bool:
        """The default version (or `version`) is ready in every worker of the model."""
        records = self.records(name)
        held = any if self.directory.on_demand(name) else all  # on demand: loaded in one pool worker
        if version is None:
            return held(r.get("state") == "ready" for r in records)
        return held(r.get("loaded", {}).get(str(version)) == "ready" for r in records)

    def waiting_for(self) -> list[str]:
        """The models the config requires that are not ready yet (server readiness: none)."""
        return [n for n in self.directory.required if n in self.models and not self.ready(n)]

    def model_unready(self, name: str, version: str | None = None) -> str:
        """Why the model (or version) is not ready, "" when it is; 404 if not served."""
        self.check_served(name)
        if version is not None:
            state = self.version_state(name, version)
            return "" if state == "ready" else f"version {version} of {name!r} is {state}"
        if self.ready(name):
            return ""
        return f"model {name!r} is not ready: {self.records(name)[0].get('reason') or 'loading'}"

    def version_state(self, name: str, version: str) -> str:
        """ "ready" in every worker, else the first worker's state; 404 outside the loaded set."""
        records = self.records(name)
        states = [r.get("loaded", {}).get(version) for r in records]
        if not is_count(version) or states[0] is None:
            loaded = sorted(int(v) for v in records[0].get("loaded", {}))
            raise not_found(f"version {version!r} of model {name!r} is not loaded (loaded: {loaded})")
        return "ready" if all(st == "ready" for st in states) else next(st for st in states if st != "ready") or ""

    def label_version(self, name: str, label: str) -> str:
        self.check_served(name)
        version = self.records(name)[0].get("labels", {}).get(label)
        if version is None:
            raise not_found(f"model {name!r} has no label {label!r}")
        return str(version)

    # ---- metadata ----------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": "modeldock", "version": importlib.metadata.version("modeldock"), "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        self.check_served(name)
        records = self.records(name)
        first = records[0]
        serving = next((r for r in records if r.get("version") is not None), None)
        shown = version if version is not None else (str(serving["version"]) if serving else None)
        if version is not None:
            state = self.version_state(name, version)
            if state != "ready":
                raise unavailable(f"version {version} of model {name!r} is {state}")
        holder = next((r for r in records if shown in r.get("signatures", {})), None) if shown else None
        signature = holder["signatures"][shown] if holder and shown else self._manifest_signature(name)
        properties: dict[str, Any] = {
            "state": first.get("state"),
            "version_policy": self.models[name].policy,
            "default_version": str(serving["version"]) if serving else None,
            "loaded_versions": first.get("loaded", {}),
            "labels": {k: str(v) for k, v in first.get("labels", {}).items()},
            "rejected": first.get("rejected", {}),
            "workers": [{"state": r.get("state"), "version": r.get("version")} for r in records],
        }
        if first.get("reason"):
            properties["reason"] = first["reason"]
        if first.get("rollout_status") or first.get("candidate") is not None:
            properties["rollout"] = {
                "phase": first.get("phase", "stable"),
                "candidate": str(first["candidate"]) if first.get("candidate") is not None else None,
                "status": first.get("rollout_status", ""),
            }
        if holder and shown:
            properties.update(holder.get("servables", {}).get(shown, {}))
        return ModelMetadata(
            name,
            [str(v) for v in sorted(int(v) for v in first.get("loaded", {}))],
            holder["platforms"][shown] if holder and shown else "",
            signature["inputs"],
            signature["outputs"],
            properties,
        )

    def _manifest_signature(self, name: str) -> dict[str, Any]:
        """A model not loaded (on demand): the signature its manifest declares, when no handler
        changes what clients send."""
        empty: dict[str, Any] = {"inputs": [], "outputs": []}
        if not self.directory.on_demand(name) or self.models[name].handler:
            return empty
        record = self.board.aspired(name)
        verdict = record.verdict if record is not None else None
        return verdict.manifest.signature.to_dict() if verdict is not None else empty
