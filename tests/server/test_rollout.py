"""A safe rollout end to end, under concurrent load, counting every response."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import FAIL_VALUE, FlakyModel, TinyMLP, example_input
from tests.server.conftest import Load, ServerProcess, infer_body
from tests.server.test_hot_reload import wait_for

ROOT = Path(__file__).resolve().parents[2]
ROWS = np.random.default_rng(3).standard_normal((16, 4)).round(3).tolist()  # varied rows: agreement means something


def publish_retrain(store: ModelStore, seed: int = 0, noise: float = 0.01, **kw: Any) -> int:
    """The model of `seed`, nudged: what retraining on the same data gives."""
    model = TinyMLP(seed=seed)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(11)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise)
    kw.setdefault("model_factory", TinyMLP)
    return store.publish("tiny", model, example_inputs=example_input(), **kw)


def rollout_of(server: ServerProcess) -> dict[str, Any]:
    return server.get("/v2/models/tiny").json()["properties"].get("rollout") or {}  # type: ignore[no-any-return]


def config(decisions: Path, **rollout: Any) -> dict[str, Any]:
    return {
        "poll_interval": 0.3,
        "decisions_path": str(decisions),
        "admin_api_key": "admin-secret",
        "models": {"tiny": {"rollout": {"min_rows": 64, "decide_after_s": 600, **rollout}}},
    }


def test_a_wrong_version_never_answers_and_a_retrain_is_promoted(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0)
    decisions = tmp_path / "decisions.json"
    server: ServerProcess = start_server(store.root, config(decisions))
    server.wait_until("/v2/health/ready")
    load = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=3)
    try:
        publish_tiny(store, seed=1)  # verifies, but predicts something else
        wait_for(lambda: "rejected" in rollout_of(server).get("status", ""), "v2 rejected", timeout=60)
        status = rollout_of(server)["status"]
        assert status.startswith("version 2 rejected: shadow: agreement") and "< 0.90 over" in status
        # The candidate answered only when asked by number while on trial; never by default.
        assert load.versions_since(0) == {"1"}
        publish_retrain(store)  # 3: the same model, retrained
        wait_for(lambda: "3" in load.versions_since(0), "v3 promoted and answering", timeout=60)
        assert "version 3 promoted" in rollout_of(server)["status"]
    finally:
        load.stop()
    assert {code for code, _ in load.results} == {200} and not load.errors
    assert load.versions_since(0) <= {"1", "3"}  # 2 never answered an unversioned request
    assert server.metric("modeldock_rollout_decisions_total", model="tiny", result="rejected") == 1
    assert server.metric("modeldock_rollout_decisions_total", model="tiny", result="promoted") == 1

    # A restart keeps both decisions: 3 serves, 2 is not tried again.
    server.stop()
    again: ServerProcess = start_server(store.root, config(decisions))
    again.wait_until("/v2/health/ready")
    assert again.post("/v2/models/tiny/infer", infer_body(ROWS)).json()["model_version"] == "3"
    assert rollout_of(again).get("candidate") is None


def test_a_quiet_model_is_decided_from_the_stored_examples(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0)
    server: ServerProcess = start_server(store.root, config(tmp_path / "d.json", decide_after_s=2))
    server.wait_until("/v2/health/ready")
    publish_retrain(store)
    wait_for(lambda: "promoted" in rollout_of(server).get("status", ""), "decided without traffic", timeout=60)
    assert "rows" in rollout_of(server)["status"]  # decided on the examples it compared
    assert server.post("/v2/models/tiny/infer", infer_body(ROWS)).json()["model_version"] == "2"


def test_canary_rolls_back_a_version_failing_on_some_inputs_with_no_client_failure(
    tmp_path: Path, start_server
) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0, formats=("state_dict",))
    cfg = config(tmp_path / "d.json", mode="canary", canary_share=0.5, canary_requests=400)
    cfg["models"]["tiny"]["artifact"] = "state_dict"
    server: ServerProcess = start_server(store.root, cfg)
    server.wait_until("/v2/health/ready")
    good = Load(server.url + "/v2/models/tiny/infer", infer_body(ROWS), threads=2)
    bad: Load | None = None
    try:
        # Same weights as 1, but it raises on rows starting with FAIL_VALUE.
        store.publish("tiny", FlakyModel(seed=0), example_inputs=example_input(), model_factory=FlakyModel,
                      factory_kwargs={"seed": 0}, formats=("state_dict",))  # fmt: skip
        wait_for(lambda: rollout_of(server).get("phase") == "canary", "shadow passed, canary", timeout=60)
        bad = Load(server.url + "/v2/models/tiny/infer", infer_body([[FAIL_VALUE, 0, 0, 0]]), threads=2)
        wait_for(lambda: "rejected" in rollout_of(server).get("status", ""), "rolled back", timeout=60)
        assert "canary: error rate" in rollout_of(server)["status"]
    finally:
        good.stop()
        if bad is not None:
            bad.stop()
    for load in (good, bad):
        assert load is not None and {code for code, _ in load.results} == {200} and not load.errors
    assert "2" in good.versions_since(0)  # the canary did answer some requests
    assert bad is not None and bad.versions_since(0) == {"1"}  # its failures were answered by 1


def test_operator_promote_and_abort_need_the_admin_key(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, seed=0)
    cfg = config(tmp_path / "d.json")
    cfg["api_key"] = "infer-key"
    server: ServerProcess = start_server(store.root, cfg)
    server.wait_until("/v2/health/ready")
    publish_tiny(store, seed=1)  # would be rejected by the shadow, given time
    key = {"x-api-key": "infer-key"}
    wait_for(lambda: rollout_of_key(server, key).get("candidate") == "2", "2 on trial", timeout=60)
    assert server.post("/v2/models/tiny/rollout/promote").status_code == 401
    assert server.post("/v2/models/tiny/rollout/promote", headers={"x-admin-key": "infer-key"}).status_code == 401
    cli = [sys.executable, "-m", "server", "rollout", "promote", "tiny", "--url", server.url]
    out = subprocess.run([*cli, "--admin-key", "admin-secret"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"default": "2"' in out.stdout
    # Applied by the supervisor; each worker swaps at its next batch or idle look (< 1 s).
    wait_for(
        lambda: server.post("/v2/models/tiny/infer", infer_body(ROWS), headers=key).json()["model_version"] == "2",
        "2 answering",
        timeout=10,
    )
    publish_retrain(store)  # 3 on trial: aborted by the operator
    wait_for(lambda: rollout_of_key(server, key).get("candidate") == "3", "3 on trial", timeout=60)
    r = server.post("/v2/models/tiny/rollout/abort", headers={"authorization": "Bearer admin-secret"})
    assert r.status_code == 200 and "aborted by the operator" in r.json()["status"]
    again = server.post("/v2/models/tiny/rollout/abort", headers={"x-admin-key": "admin-secret"})
    assert again.status_code == 409 and "no rollout in progress" in again.json()["error"]
    wrong = subprocess.run([*cli, "--admin-key", "nope"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert wrong.returncode == 1 and "refused (401)" in wrong.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "server", "rollout", "status", "tiny", "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 1 and "cannot reach" in gone.stderr


def rollout_of_key(server: ServerProcess, headers: dict[str, str]) -> dict[str, Any]:
    return server.get("/v2/models/tiny", headers=headers).json()["properties"].get("rollout") or {}  # type: ignore[no-any-return]
