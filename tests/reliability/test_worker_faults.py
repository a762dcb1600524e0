"""SIGKILL an inference worker: LitServe's monitor restarts it, the restarted worker loads and
validates the version before it serves, and only requests it held fail: 503 as soon as the new
worker answers a later request (504 after inference_timeout_s at worst; never a hang). Queued
requests are answered after the restart."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import SlowLoadModel, TinyMLP, example_input
from tests.server.conftest import Load, ServerProcess, infer_body
from tests.server.test_hot_reload import wait_for


def worker_pids(server: ServerProcess) -> list[int]:
    """Inference workers of the server we started (spawned children running spawn_main)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            pgid = os.getpgid(int(proc.name))
        except OSError:
            continue
        if pgid == server.proc.pid and b"spawn_main" in cmd:
            found.append(int(proc.name))
    return found


def test_killing_a_worker_under_load_loses_only_what_it_held(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store)
    server: ServerProcess = start_server(store.root, {"models": {"tiny": {"inference_timeout_s": 20}}})
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body([[0.1, 0.2, 0.3, 0.4]]), threads=32)
    try:
        wait_for(lambda: load.count() > 300, "load running")
        [pid] = worker_pids(server)
        os.kill(pid, signal.SIGKILL)
        killed_at = load.count()
        wait_for(lambda: worker_pids(server) not in ([], [pid]), "worker restarted", timeout=20)
        mark = load.count()
        wait_for(lambda: sum(1 for c, _ in load.results[mark:] if c == 200) > 200, "serving again", timeout=60)
    finally:
        load.stop()
    failed = [(c, d) for c, d in load.results if c != 200]
    assert {c for c, _ in failed} <= {503, 504}, failed[:3]
    assert all("restarted" in d for c, d in failed if c == 503)
    assert len(failed) <= 32  # at most one batch: what the dead worker held
    assert not load.errors
    assert all(c == 200 for c, _ in load.results[: killed_at - 32])
    codes = sorted({c for c, _ in failed})
    print(f"killed worker {pid}: {len(failed)} of {len(load.results)} requests failed ({codes})")


def test_killing_a_worker_while_it_loads_a_version(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    store.publish("slow", TinyMLP(), example_inputs=example_input(), model_factory=TinyMLP, formats=("state_dict",))
    server: ServerProcess = start_server(
        store.root, {"poll_interval": 0.5, "models": {"slow": {"artifact": "state_dict", "inference_timeout_s": 12}}}
    )
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/slow/infer", infer_body([[0.1, 0.2, 0.3, 0.4]]), threads=2)
    try:
        store.publish(
            "slow",
            TinyMLP(seed=1),
            example_inputs=example_input(),
            model_factory=SlowLoadModel,
            factory_kwargs={"seed": 1},
            formats=("state_dict",),
        )
        time.sleep(1.5)  # the watcher (0.5 s) has found v2 and is inside its slow load
        [pid] = worker_pids(server)
        os.kill(pid, signal.SIGKILL)
        # The restarted worker (LitServe's monitor: ~2 s) loads the aspired version (v2, 4 s)
        # before it serves again; requests queued meanwhile wait (timeout 12 s) and are answered.
        mark = load.count()
        wait_for(lambda: "2" in load.versions_since(mark), "v2 served after the restart", timeout=60)
        assert server.get("/v2/health/ready").status_code == 200
    finally:
        load.stop()
    assert {c for c, _ in load.results} <= {200, 503, 504}
    assert sum(1 for c, _ in load.results if c != 200) <= 2  # what the dead worker held, at most
    assert not load.errors


def test_a_request_held_by_a_killed_worker_fails_fast(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from tests.fakes import SLEEP_VALUE, SlowModel

    store = ModelStore(tmp_path / "models")
    store.publish("slow", SlowModel(), example_inputs=example_input(), model_factory=SlowModel, formats=("state_dict",))
    server: ServerProcess = start_server(
        store.root, {"models": {"slow": {"artifact": "state_dict", "inference_timeout_s": 30}}}
    )
    server.wait_until("/v2/health/ready")
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        held = pool.submit(server.post, "/v2/models/slow/infer", infer_body([[SLEEP_VALUE, 0, 0, 0]]))
        time.sleep(0.5)  # the worker is now inside the 60 s predict
        [pid] = worker_pids(server)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: worker_pids(server) not in ([], [pid]), "worker restarted", timeout=20)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the first answer of the new worker settles the held one
            if server.post("/v2/models/slow/infer", infer_body([[0.1, 0.2, 0.3, 0.4]])).status_code == 200:
                break
            time.sleep(0.2)
        r = held.result(timeout=30)
    assert r.status_code == 503 and "restarted" in r.json()["error"]
    assert time.monotonic() - started < 25  # well before the 30 s inference timeout
