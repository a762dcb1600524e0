"""The status board: the supervisor's decisions and what each worker has loaded.

The supervisor writes one aspired record per model; workers read it (off the request path) and
write one record per (model, worker); the HTTP processes read those for readiness and metadata.
It is a multiprocessing-Manager dict bound before any worker or HTTP process starts, so a read
or write is one IPC round trip: never on the per-request path. A counter in shared memory moves
with every decision the supervisor writes, so a worker looks at it, not at the Manager, to know
whether there is anything new to read.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from collections.abc import MutableMapping
from typing import Any

from .messages import Ack, AspiredRecord, Command, Listing, WorkerRecord


class Board:
    """A view over the shared dict; keys are `worker/<model>/<index>` and `aspired/<model>`."""

    def __init__(self) -> None:
        self._shared: MutableMapping[str, Any] | None = None
        # Made before any worker is spawned (it travels with the spawn); an aligned 64-bit word
        # needs no lock to read whole.
        self._generation = mp.get_context("spawn").RawValue("Q", 0)

    def generation(self) -> int:
        """Moves after every decision or registry the supervisor writes (no IPC to read)."""
        return int(self._generation.value)

    def _moved(self) -> None:
        self._generation.value += 1  # after the write: a reader seeing it finds the new record

    def bind(self, shared: MutableMapping[str, Any]) -> None:
        self._shared = shared

    @property
    def shared(self) -> MutableMapping[str, Any]:
        assert self._shared is not None, "the board is bound before any process reads it"
        return self._shared

    def publish(self, model: str, worker: int, record: WorkerRecord) -> None:
        self.shared[f"worker/{model}/{worker}"] = record

    def records(self, model: str, workers: int) -> list[WorkerRecord]:
        """One record per expected worker; a worker not yet reporting counts as loading."""
        return [self.shared.get(f"worker/{model}/{w}") or WorkerRecord(state="loading") for w in range(workers)]

    def aspire(self, model: str, record: AspiredRecord) -> None:
        self.shared[f"aspired/{model}"] = record
        self._moved()

    def command(self, command: Command) -> str:
        """An operator's command, for the supervisor's next poll; returns its id (for `take_ack`)."""
        cid = uuid.uuid4().hex
        self.shared[f"command/{cid}"] = command
        return cid

    def take_commands(self) -> list[tuple[str, Command]]:
        """(id, command) of every pending command, removed from the board."""
        taken = []
        for key in [k for k in self.shared.keys() if str(k).startswith("command/")]:  # noqa: SIM118 (a proxy)
            value = self.shared.pop(key, None)
            if isinstance(value, Command):
                taken.append((key.removeprefix("command/"), value))
        return taken

    def ack(self, cid: str, ack: Ack) -> None:
        self.shared[f"ack/{cid}"] = ack

    def take_ack(self, cid: str) -> Ack | None:
        found = self.shared.pop(f"ack/{cid}", None)
        return found if isinstance(found, Ack) else None

    def list_store(self, names: list[str]) -> None:
        """The models the store holds (served or not), for the repository index."""
        self.shared["store_models"] = list(names)

    def store_models(self) -> list[str]:
        found = self.shared.get("store_models")
        return list(found) if isinstance(found, list) else []

    def list_models(self, listings: dict[str, Listing]) -> None:
        self.shared["registry"] = listings
        self._moved()

    def models(self) -> dict[str, Listing]:
        found = self.shared.get("registry")
        return found if isinstance(found, dict) else {}

    def aspired(self, model: str) -> AspiredRecord | None:
        record = self.shared.get(f"aspired/{model}")
        return record if isinstance(record, AspiredRecord) else None
