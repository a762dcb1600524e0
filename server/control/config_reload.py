"""Version settings follow the config file while serving (TF Serving polls its model config too).

When the file changes, it is read and checked whole; a file that does not check out changes
nothing (logged with the reason). Per model, `policy`, `versions`, `labels` and `trust` apply at
the next poll (new keys judge the versions not yet in memory); any other change is logged as
needing a restart. Per replica: a Kubernetes ConfigMap update reaches every pod, which is how a
label moves cluster-wide.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

from ..config import ConfigError, ModelConfig, ServerConfig
from .models import ModelControl

log = logging.getLogger(__name__)
LIVE = ("policy", "versions", "labels", "trust")  # applied while serving; the rest needs a restart


class ConfigReload:
    """Called before each control poll; cheap (one stat) while the file is unchanged."""

    def __init__(self, path: str, reread: Callable[[], ServerConfig], controls: Sequence[ModelControl]) -> None:
        self.path, self.reread, self.controls = path, reread, list(controls)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def __call__(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return
        self._seen = stamp
        try:
            cfg = self.reread()
        except ConfigError as e:
            log.error("config file %s changed but cannot be used; keeping the running settings: %s", self.path, e)
            return
        for control in self.controls:
            self._apply(control, cfg.model(control.cfg.name))

    def _apply(self, control: ModelControl, new: ModelConfig) -> None:
        old = control.cfg
        live = {k: getattr(new, k) for k in LIVE if getattr(new, k) != getattr(old, k)}
        later = [f.name for f in dataclasses.fields(old) if f.name not in (*LIVE, "name")]
        later = [k for k in later if getattr(new, k) != getattr(old, k)]
        if later:
            log.warning("%s: config changes to %s take effect after a restart", old.name, later)
        if live:
            log.info("%s: applying config changes %s", old.name, live)
            control.reconfigure(dataclasses.replace(old, **live))
