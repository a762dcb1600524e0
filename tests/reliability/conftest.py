"""A module-scoped real server over a small store, shared by the reliability tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.server.conftest import ServerProcess, start_server

__all__ = ["start_server"]  # the fixture, shared with tests/server


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("reliability")
    store = ModelStore(base / "models")
    publish_tiny(store)
    (base / "cwd").mkdir()
    config = {"poll_interval": 0.5, "models": {"tiny": {"max_request_bytes": 1 << 20}}}
    srv = ServerProcess(store.root, base / "cwd", config)
    try:
        srv.wait_until("/v2/health/ready")
        yield srv
    finally:
        srv.stop()
