"""Debian's Prometheus scraping a real server: every Grafana panel query returns data, and the
alerting rules evaluate against the real metrics (a version that fails verification and one whose
rollout is rejected fire their alerts, nothing else does)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as tg
import yaml
from tritonclient.utils import InferenceServerException

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.ops.harness import ROOT, ROWS, Server
from tests.server.conftest import free_port

DASHBOARD = ROOT / "k8s/grafana/modeldock-dashboard.json"
RULES = ROOT / "k8s/monitoring/modeldock-rules.yml"
# Grafana's variables, as Grafana would fill them in for this run.
VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$model": "tiny"}
# Rollouts decided in seconds. The time ratio of a tiny model on a busy machine is noise: only the
# predictions decide here (the same weights are promoted, different ones rejected).
CONFIG = {"defaults": {"rollout": {"min_rows": 32, "decide_after_s": 3, "max_latency_ratio": 1000}}}


class Prometheus:
    """`prometheus` on 127.0.0.1 with its own config and data dir, started and stopped by PID."""

    def __init__(self, binary: str, target: str, folder: Path) -> None:
        folder.mkdir()
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "modeldock", "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = folder / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def api(self, path: str, **params: str) -> Any:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def wait_for(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            with contextlib.suppress(requests.ConnectionError, AssertionError):
                if found := self.query(expr):
                    return found
            time.sleep(0.5)
        raise AssertionError(f"no series for {expr} after {timeout}s:\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query with the dashboard's variables filled in) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(name, value).replace("${" + name[1:] + "}", value)
            assert "$" not in expr, f"{panel['title']}: a variable this test does not know: {expr}"
            found.append((panel["title"], expr))
    return found


def reject_next_version(store: ModelStore, name: str) -> int:
    """Copy the newest version as the next one with one artifact byte changed: its sha256 fails."""
    model = store.root / name
    newest = max(int(p.name) for p in model.iterdir() if p.name.isdigit())
    staged = model.parent.parent / f"staged-{name}"
    shutil.copytree(model / str(newest), staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    if manifest.get("version") == newest:
        manifest["version"] = newest + 1
        (staged / "manifest.json").write_text(json.dumps(manifest))
    artifact = staged / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    staged.rename(model / str(newest + 1))  # appears whole, like a finished publish
    return newest + 1


def roll_out(server: Server, version: int, result: str, rng: np.random.Generator) -> str:
    """Send varied rows until the rollout of `version` ends in `result`; its status text."""
    deadline = time.monotonic() + 90
    for _ in range(1000):
        rows = rng.standard_normal((8, 4)).round(4).tolist()
        assert server.infer("tiny", rows).status_code == 200
        status = (server.get("/v2/models/tiny").json()["properties"].get("rollout") or {}).get("status", "")
        if status.startswith(f"version {version} ") and not status.startswith(f"version {version} in "):
            assert status.startswith(f"version {version} {result}:"), status  # decided, the other way
            return str(status)
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"version {version} was not {result}:\n{server.log_path.read_text()[-3000:]}")


def grpc_traffic(server: Server, calls: int) -> list[str]:
    """`calls` good ModelInfer calls and one with a wrong shape; the versions that answered."""
    client = tg.InferenceServerClient(server.grpc_url)
    try:
        versions = []
        for _ in range(calls):
            good = tg.InferInput("input", [2, 4], "FP32")
            good.set_data_from_numpy(np.asarray(ROWS, dtype=np.float32))
            answer = client.infer("tiny", [good])
            assert answer.as_numpy("output").shape == (2, 3)
            versions.append(answer.get_response().model_version)
        bad = tg.InferInput("input", [1, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
        with pytest.raises(InferenceServerException) as e:
            client.infer("tiny", [bad])
        assert str(e.value.status()) == "StatusCode.INVALID_ARGUMENT", e.value
        return versions
    finally:
        client.close()


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not installed (Debian: apt-get install prometheus)")
    return path


@pytest.fixture
def running(tmp_path: Path, prometheus_binary: str) -> Iterator[tuple[Server, Prometheus, ModelStore]]:
    store = ModelStore(tmp_path / "models")
    publish_tiny(store, "tiny", seed=0)
    config = tmp_path / "modeldock.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    server = Server(store.root, tmp_path / "cache", tmp_path / "server.log", "--config", str(config), grpc=True)
    prom: Prometheus | None = None
    try:
        server.wait_ready()
        prom = Prometheus(prometheus_binary, f"127.0.0.1:{server.port}", tmp_path / "prometheus")
        yield server, prom, store
    finally:
        if prom is not None:
            prom.stop()
        server.stop()


def test_every_dashboard_panel_and_alert_rule_works_on_real_metrics(
    running: tuple[Server, Prometheus, ModelStore],
) -> None:
    server, prom, store = running
    rng = np.random.default_rng(0)
    prom.wait_for('up{job="modeldock"} == 1')
    for _ in range(20):
        assert server.infer("tiny").status_code == 200
    assert server.infer("tiny", [[1.0, 2.0]]).status_code == 400  # a wrong shape: a 4xx series too
    assert grpc_traffic(server, 5) == ["1"] * 5

    # As in production: a retrain with the same predictions (promoted after its shadow, and a load
    # after the first scrape, for the load-time panel), a version whose files fail verification,
    # and one with other weights, rejected by its shadow comparison.
    assert publish_tiny(store, "tiny", seed=0) == 2
    assert "over" in roll_out(server, 2, "promoted", rng)
    rejected = reject_next_version(store, "tiny")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        props = server.get("/v2/models/tiny").json().get("properties", {})
        if str(rejected) in props.get("rejected", {}):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"version {rejected} was not rejected:\n{server.log_path.read_text()[-3000:]}")
    assert publish_tiny(store, "tiny", seed=1) == rejected + 1
    assert "agreement" in roll_out(server, rejected + 1, "rejected", rng)

    for _ in range(20):  # traffic inside the panels' rate windows
        assert server.infer("tiny").status_code == 200
    assert grpc_traffic(server, 5) == ["2"] * 5  # the promoted version answers, not the rejected one
    prom.wait_for('modeldock_model_reloads_total{result="rejected"}')
    prom.wait_for('modeldock_rollout_decisions_total{result="rejected"}')
    prom.wait_for('modeldock_rollout_decisions_total{result="promoted"}')
    prom.wait_for('modeldock_version_load_seconds_count{model="tiny"} >= 2')
    prom.wait_for('sum(modeldock_grpc_requests_total{model="tiny", version="2", code="OK"}) >= 5')
    time.sleep(3)  # a few more scrapes so that every rate() has two samples after the changes

    # The dashboard's $model variable: label_values(modeldock_requests_total, model).
    assert "tiny" in prom.api("label/model/values", **{"match[]": "modeldock_requests_total"})
    empty = []
    for title, expr in panel_queries():
        values = [float(r["value"][1]) for r in prom.query(expr)]  # every query parses and runs
        if title.startswith("Memory budget"):
            continue  # this server has no memory_budget (its series: tests/server/test_memory_budget.py)
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # The panels show what happened: both candidates' phases ended, the rejected one disagreed.
    phases = {
        (r["metric"]["version"], r["metric"]["phase"]): r["value"][1] for r in prom.query("modeldock_rollout_phase")
    }
    assert phases == {("2", "shadow"): "0", (str(rejected + 1), "shadow"): "0"}, phases
    agreement = {r["metric"]["version"]: float(r["value"][1]) for r in prom.query("modeldock_rollout_agreement")}
    assert agreement["2"] == 1.0 and agreement[str(rejected + 1)] < 0.9, agreement
    codes = {r["metric"]["code"] for r in prom.query("modeldock_grpc_requests_total")}
    assert codes == {"OK", "INVALID_ARGUMENT"}, codes

    # The rules load and evaluate on real series; the two rejections fire, the rest stay quiet.
    groups = prom.api("rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert len(rules) == 8 and all(r["health"] == "ok" for r in rules.values()), rules
    expected = {"ModeldockVersionRejected", "ModeldockRolloutRejected"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alerts = {a["labels"]["alertname"]: a for a in prom.api("alerts")["alerts"]}
        if expected <= set(alerts):
            break
        time.sleep(0.5)
    assert set(alerts) == expected, alerts
    for name in expected:
        assert alerts[name]["state"] == "firing", alerts[name]
        assert alerts[name]["labels"]["model"] == "tiny", alerts[name]
