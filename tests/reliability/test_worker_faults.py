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
from tests.fakes import TinyMLP, example_input
from tests.reliability.slow_load import MarkedSlowLoad, loaders
from tests.server.conftest import Load, ServerProcess, infer_body
from tests.server.test_hot_reload import wait_for


def worker_pids(server: ServerProcess) -> list[int]:
    """Inference workers of the server we started (spawned children running spawn_main); the
    servers here run with `pool_workers: 0`, so these are the model's own."""
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
    server: ServerProcess = start_server(
        store.root, {"pool_workers": 0, "models": {"tiny": {"inference_timeout_s": 20}}}
    )
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body([[0.1, 0.2, 0.3, 0.4]]), threads=32)
    try:
        wait_for(lambda: load.count() > 300, "load running")
        [pid] = worker_pids(server)
        wait_for(lambda: len(load.outstanding) > 0, "requests in flight")
        with load.lock:  # the clients record nothing meanwhile: this is the state at the kill
            os.kill(pid, signal.SIGKILL)
            in_flight = set(load.outstanding)
            answered_before = dict(load.outcomes)
        wait_for(lambda: worker_pids(server) not in ([], [pid]), "worker restarted", timeout=20)
        mark = load.count()
        wait_for(lambda: sum(1 for c, _ in load.results[mark:] if c == 200) > 200, "serving again", timeout=60)
        wait_for(lambda: in_flight.isdisjoint(load.outstanding), "requests in flight at the kill answered", timeout=60)
    finally:
        load.stop()
    # The kill landed under load: requests were answered before it, and in flight at it.
    assert len(answered_before) > 300 and in_flight, (len(answered_before), in_flight)
    assert set(answered_before.values()) == {200}
    # Every request in flight at the kill was answered (200, or 503/504 if the dead worker held it).
    assert {load.outcomes[i] for i in in_flight} <= {200, 503, 504}, {i: load.outcomes[i] for i in in_flight}
    failed = [(c, d) for c, d in load.results if c != 200]
    assert {c for c, _ in failed} <= {503, 504}, failed[:3]
    assert all("restarted" in d for c, d in failed if c == 503)
    assert len(failed) <= 32  # at most one batch: what the dead worker held
    assert not load.errors
    codes = sorted({c for c, _ in failed})
    print(
        f"killed worker {pid} after {len(answered_before)} answers with {len(in_flight)} in flight: "
        f"{len(failed)} of {len(load.results)} requests failed ({codes})"
    )


def test_killing_a_worker_while_it_loads_a_version(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    store.publish("slow", TinyMLP(), example_inputs=example_input(), model_factory=TinyMLP, formats=("state_dict",))
    server: ServerProcess = start_server(
        store.root,
        {
            "poll_interval": 0.5,
            "pool_workers": 0,
            "models": {"slow": {"artifact": "state_dict", "inference_timeout_s": 12}},
        },
    )
    server.wait_until("/v2/health/ready")
    marker = str(tmp_path / "loads")
    load = Load(server.url + "/v2/models/slow/infer", infer_body([[0.1, 0.2, 0.3, 0.4]]), threads=2)
    try:
        store.publish(
            "slow",
            TinyMLP(seed=1),
            example_inputs=example_input(),
            model_factory=MarkedSlowLoad,
            factory_kwargs={"seed": 1, "marker": marker},
            formats=("state_dict",),
        )
        [pid] = worker_pids(server)
        wait_for(lambda: pid in loaders(marker), "the worker starts loading v2", timeout=30)
        with load.lock:
            os.kill(pid, signal.SIGKILL)
            served_before = {v for c, v in load.results if c == 200}
        # The kill landed inside the load: the worker had begun building v2 and not served it.
        assert served_before == {"1"}, served_before
        # The restarted worker (LitServe's monitor: ~2 s) loads the aspired version (v2, 4 s)
        # before it serves again; requests queued meanwhile wait (timeout 12 s) and are answered.
        mark = load.count()
        wait_for(lambda: "2" in load.versions_since(mark), "v2 served after the restart", timeout=60)
        assert server.get("/v2/health/ready").status_code == 200
    finally:
        load.stop()
    restarted = [p for p in loaders(marker) if p != pid and p != os.getpid()]
    assert restarted, f"no other worker loaded v2 after the kill: {loaders(marker)}"
    assert {c for c, _ in load.results} <= {200, 503, 504}
    assert sum(1 for c, _ in load.results if c != 200) <= 2  # what the dead worker held, at most
    assert not load.errors


def test_a_request_held_by_a_killed_worker_fails_fast(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    from tests.fakes import SLEEP_VALUE, SlowModel

    store = ModelStore(tmp_path / "models")
    store.publish("slow", SlowModel(), example_inputs=example_input(), model_factory=SlowModel, formats=("state_dict",))
    server: ServerProcess = start_server(
        store.root, {"pool_workers": 0, "models": {"slow": {"artifact": "state_dict", "inference_timeout_s": 30}}}
    )
    server.wait_until("/v2/health/ready")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(server.post, "/v2/models/slow/infer", infer_body([[SLEEP_VALUE, 0, 0, 0]]))
        # The worker records a batch's queue wait as it starts it: then it is inside the 60 s predict.
        wait_for(lambda: server.metric("modeldock_queue_wait_seconds_count", model="slow") >= 1, "predict began")
        [pid] = worker_pids(server)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: worker_pids(server) not in ([], [pid]), "worker restarted", timeout=20)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the first answer of the new worker settles the held one
            if server.post("/v2/models/slow/infer", infer_body([[0.1, 0.2, 0.3, 0.4]])).status_code == 200:
                break
            time.sleep(0.2)
        r = held.result(timeout=30)
    # 503 "restarted", not the 504 the 30 s inference timeout would give: settled by the restart.
    assert r.status_code == 503 and "restarted" in r.json()["error"], r.text
