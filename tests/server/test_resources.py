"""Container-aware limits and the memory check before a second copy is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model_store import ModelStore
from model_store.manifest import Manifest
from server import resources
from server.worker import loader
from tests.conftest import publish_tiny


def test_cgroup_limits_cap_cpus_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(str(512 << 20))
    (tmp_path / "memory.current").write_text(str(500 << 20))
    monkeypatch.setattr(resources, "_CGROUP", tmp_path)
    assert resources.usable_cpus() == min(2, len(os.sched_getaffinity(0)))
    assert resources.available_memory() == 12 << 20
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max")
    assert resources.usable_cpus() == len(os.sched_getaffinity(0))
    assert (resources.available_memory() or 0) > 12 << 20


def test_a_copy_that_would_not_fit_is_refused(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    publish_tiny(store)
    folder = store.path("tiny", 1)
    m = Manifest.load(folder)
    assert loader.memory_problem(m, "onnx", "cpu") is None
    monkeypatch.setattr(loader, "available_memory", lambda: 1024)
    problem = loader.memory_problem(m, "onnx", "cpu")
    assert problem is not None and "not enough memory" in problem
