"""In a submitting process (HTTP, gRPC): the models served now, their endpoints, and those the
config requires.

The models of the config at start-up have endpoints from the start; models the supervisor adds
while serving (the pool's) get one on first use. The registry is read from the board at most
every REFRESH_S, so a removed model answers 404 within that.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from ..config import ModelConfig
from ..ipc.board import Board
from ..ipc.messages import Listing
from .endpoint import ModelEndpoint

REFRESH_S = 0.5
E = TypeVar("E", bound=ModelEndpoint)  # REST's endpoint adds its codec; gRPC uses the plain one


class ModelDirectory(Generic[E]):
    def __init__(
        self,
        static: Sequence[ModelConfig],
        board: Board,
        handlers: Mapping[str, E],
        make_pool_handler: Callable[[ModelConfig], E] | None = None,
        pool_workers: int = 0,
    ) -> None:
        self.required = [m.name for m in static]  # readiness is about these (docs/model-control.md)
        self._static = {m.name: m for m in static}
        self.static_names = frozenset(self._static)
        self.board, self.pool_workers = board, pool_workers
        self._handlers = dict(handlers)
        self._make_pool_handler = make_pool_handler
        self._listings: dict[str, Listing] = {}
        self._read_at = -REFRESH_S

    def _fresh(self) -> dict[str, Listing]:
        now = time.monotonic()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now
            with contextlib.suppress(Exception):  # the board's process gone (shutdown): keep the last view
                self._listings = self.board.models()
        return self._listings

    @property
    def models(self) -> dict[str, ModelConfig]:
        """Served now: name -> config."""
        listings = self._fresh()
        served = {n: c for n, c in self._static.items() if not (n in listings and listings[n].removed)}
        served |= {n: entry.config for n, entry in listings.items() if entry.pool and not entry.removed}
        return served

    def handler(self, name: str) -> E | None:
        listing = self._fresh().get(name)
        if listing is not None and listing.removed:
            return None
        found = self._handlers.get(name)
        if found is None and listing is not None and listing.pool and self._make_pool_handler is not None:
            found = self._handlers[name] = self._make_pool_handler(listing.config)
        return found

    def workers(self, name: str) -> int:
        static = self._static.get(name)
        return static.workers if static is not None else self.pool_workers

    def on_demand(self, name: str) -> bool:
        """Loaded on its first request within the memory budget (and may be evicted)."""
        listing = self._fresh().get(name)
        return listing is not None and listing.on_demand

    def removed_reason(self, name: str) -> str:
        listing = self._fresh().get(name)
        return listing.removed if listing is not None else ""
