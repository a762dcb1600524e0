"""Which models the server serves: those of the config at start-up, and models that come and go.

A model folder that appears in the store (and that the config allows) is served after one poll:
it gets a decision point here and is hosted by the pool workers (LitServe's worker processes are
fixed at start-up, so models added later share a pool of generic workers). A model whose folder
disappears while the store lists fine is unloaded, after its queued requests are answered. A store
that cannot be listed, whose root is gone, or that lists no model at all changes nothing: an NFS
or volume hiccup must not unload what serves. The operator's load and unload (admin API) apply to
this replica only, until it restarts.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path

from model_store import ModelStore, StoreError
from model_store.store import check_name

from ..config import ModelConfig
from ..ipc.board import Board
from ..ipc.messages import DONE, Ack, Command, Listing
from .models import ModelControl

log = logging.getLogger(__name__)
POOL = "__pool__"  # the channel and board name of the pool workers


class Registry:
    def __init__(
        self,
        store: ModelStore,
        board: Board,
        model_config: Callable[[str], ModelConfig],
        make_control: Callable[[ModelConfig], ModelControl],
        allowed: Callable[[str], bool],
        controls: dict[str, ModelControl],
        on_demand: bool = False,
    ) -> None:
        self.store, self.board, self.model_config, self.make_control = store, board, model_config, make_control
        self.allowed = allowed
        self.on_demand = on_demand  # a memory budget: the pool loads its models on first request
        self.controls = controls  # name -> decision point, shared with the control loop
        self.listings = {name: Listing(c.cfg, pool=False) for name, c in controls.items()}
        self.in_store: list[str] = sorted(controls)
        self.unloaded: set[str] = set()  # by the operator, until a load or a restart

    def publish(self) -> None:
        self.board.list_models(dict(self.listings))
        self.board.list_store(self.in_store)

    # ---- one poll ------------------------------------------------------------------------------
    def discover(self) -> None:
        """Add models that appeared, mark removed those whose folder left; never on a bad listing."""
        names = self._listing()
        if names is None:
            return
        changed = names != self.in_store
        self.in_store = names
        for name in names:
            if name in self.unloaded or not self.allowed(name):
                continue
            listing = self.listings.get(name)
            if listing is None:
                self._add(name)
                changed = True
            elif listing.removed == "its folder left the store":
                self._set_removed(name, "")  # it came back
                changed = True
        for name, listing in list(self.listings.items()):
            if name not in names and not listing.removed:
                log.warning("%s: its folder left the store; unloading it once its queued requests are answered", name)
                self._set_removed(name, "its folder left the store")
                changed = True
        if changed:
            self.publish()

    def _listing(self) -> list[str] | None:
        try:
            root = getattr(self.store, "root", None)
            if isinstance(root, Path) and not self.store.location.startswith("s3://") and not root.is_dir():
                return None  # the root is gone (an unmounted volume): keep everything
            names = sorted(self.store.models())
        except (OSError, StoreError) as e:
            log.debug("model listing failed: %s", e)
            return None
        return names or None  # an empty listing is more likely a hiccup than every model deleted

    def _add(self, name: str) -> None:
        cfg = self.model_config(name)
        control = self.make_control(cfg)
        control.poll()
        self.board.aspire(name, control.record)  # before it is listed: a pool worker needs it at once
        self.controls[name] = control
        self.listings[name] = Listing(cfg, pool=True, on_demand=self.on_demand and cfg.pin is not True)
        how = "loaded on its first request" if self.listings[name].on_demand else "serving it from the pool"
        log.info("%s: in the store; %s (version %s)", name, how, control.record.default)

    def _set_removed(self, name: str, reason: str) -> None:
        listing = self.listings[name]
        self.listings[name] = Listing(listing.config, listing.pool, reason, listing.on_demand)
        control = self.controls.get(name)
        if control is not None:
            control.removed = reason

    # ---- the operator's word (admin API) ---------------------------------------------------------
    def act(self, command: Command) -> Ack:
        return self.load(command.model) if command.action == "load" else self.unload(command.model)

    def load(self, name: str) -> Ack:
        try:
            check_name(name)  # a model name of this store: never a path or a URL
        except StoreError as e:
            return Ack(400, str(e))
        if name not in self.in_store:
            return Ack(404, f"model {name!r} is not in the store")
        self.unloaded.discard(name)
        if name not in self.listings:
            self._add(name)
        elif self.listings[name].removed:
            self._set_removed(name, "")
        self.publish()
        return DONE

    def unload(self, name: str) -> Ack:
        if name not in self.listings or self.listings[name].removed:
            return Ack(409, f"model {name!r} is not loaded")
        self.unloaded.add(name)
        self._set_removed(name, "unloaded by the operator")
        self.publish()
        return DONE


def allow_rule(configured: list[str] | None, pattern: str) -> Callable[[str], bool]:
    """The config's `models` names, plus names matching `allow_models` (a glob; '' for none)."""
    named = set(configured or [])

    def allowed(name: str) -> bool:
        return name in named or (bool(pattern) and fnmatch.fnmatchcase(name, pattern))

    return allowed
