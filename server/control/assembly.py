"""Builds the decision point of a model: its store (trusting pickles or not), source, rollout."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from model_store import ModelStore, S3ModelStore, StoreError
from model_store.policy import VersionPolicy

from ..config import ModelConfig, ServerConfig
from ..metrics import metrics
from .decisions import Decisions
from .models import ModelControl
from .source import StoreSource
from .version_set import VersionSet

# A bucket's mirror keeps, per model, the versions the policy prefers up to this many servable
# ones: the one serving and a fallback that a rollback can swap to without a download.
MIRROR_KEEP = 2


def open_store(cfg: ServerConfig, trust_pickle: bool = False) -> ModelStore:
    store = ModelStore(cfg.store, cache_dir=cfg.cache_dir or None, trust_pickle=trust_pickle)
    if isinstance(store, S3ModelStore):
        store.init_mirror()  # workers load from the verified local mirror
    elif not store.root.is_dir():
        raise StoreError(f"store {store.root} does not exist")
    return store


def _count_decision(model: str, result: str, version: int, reason: str) -> None:
    metrics().rollout_decisions.labels(model, result).inc()


class ControlFactory:
    """One per server: the stores (one per pickle trust) and the decisions file are shared."""

    def __init__(self, cfg: ServerConfig, store: ModelStore) -> None:
        self.cfg = cfg
        # Whether pickles are trusted changes what verification does (a trusted pickle is loaded
        # and checked), so models that trust them are verified through a store that does.
        self.stores = {store.trust_pickle: store}
        self.decisions = Decisions(Path(cfg.decisions_path or Path(cfg.cache_dir) / "decisions.json"))

    def __call__(self, mc: ModelConfig) -> ModelControl:
        if mc.trust_pickle not in self.stores:
            self.stores[mc.trust_pickle] = open_store(self.cfg, trust_pickle=mc.trust_pickle)
        store = self.stores[mc.trust_pickle]
        store.set_trust(mc.name, mc.trust.policy())  # before the model's first poll
        versions = VersionSet.parse(mc.versions)
        if isinstance(store, S3ModelStore):
            store.retain(mc.name, keep=versions.mirror_keep(MIRROR_KEEP), policy=mc.policy)
        control = ModelControl(
            mc, StoreSource(store, mc.name, VersionPolicy.parse(mc.policy), versions), self.decisions
        )
        reloads = metrics().reloads
        for result in ("loaded", "rejected", "failed"):
            reloads.labels(mc.name, result)  # the series exist from the start: alerts see the first event
        control.on_rejected = lambda name: reloads.labels(name, "rejected").inc()
        control.rollout.on_decision = functools.partial(_count_decision, mc.name)
        return control


MakeControl = Callable[[ModelConfig], ModelControl]
