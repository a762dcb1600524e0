"""Many models within a memory budget, on a real server: loaded on their first request, the least
recently used idle one unloaded to make room, pinned models untouched, a too-large one refused."""

from __future__ import annotations

from pathlib import Path

from model_store import ModelStore
from tests.conftest import publish_tiny
from tests.fakes import TinyMLP, example_input
from tests.server.conftest import ServerProcess, infer_body

ROWS = [[0.1, 0.2, 0.3, 0.4]]
ADMIN = {"x-admin-key": "admin-secret"}
MEDIUM = 50_000  # hidden units: a 1.6 MB ONNX file, over 5 MiB in an onnxruntime session
BUDGET = 24 << 20  # so not all six medium models fit (each load's growth is measured, not known)
SIX = "abcdef"


def publish_wide(store: ModelStore, name: str, seed: int, hidden: int) -> None:
    store.publish(name, TinyMLP(seed=seed, hidden=hidden), example_inputs=example_input(), formats=("onnx",))


def infer(server: ServerProcess, model: str) -> tuple[int, str]:
    reply = server.post(f"/v2/models/{model}/infer", infer_body(ROWS))
    return reply.status_code, reply.text


def index(server: ServerProcess) -> dict[str, dict[str, str]]:
    entries = server.post("/v2/repository/index", {}, headers=ADMIN).json()
    return {e["name"]: e for e in entries}


def test_models_load_on_first_request_and_the_least_recently_used_is_unloaded(
    tmp_path: Path,
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    store = ModelStore(tmp_path / "models")
    for i, name in enumerate(SIX):
        publish_wide(store, name, i, MEDIUM)
    publish_tiny(store, "pinned", seed=5, formats=("onnx",))
    publish_wide(store, "huge", 6, 1_100_000)  # 31 MB: more than the budget before any load
    config = {
        "memory_budget": "24MiB",
        "poll_interval": 0.3,
        "grpc_port": 0,
        "admin_api_key": ADMIN["x-admin-key"],
        "models": {"pinned": {}},  # workers of its own: never evicted
        "allow_models": "*",
    }
    server: ServerProcess = start_server(store.root, config)
    server.wait_until("/v2/health/ready")

    # Before any request: listed, valid, not in memory, and every state says so.
    meta = server.get("/v2/models/a").json()
    assert meta["properties"]["state"] == "available"
    assert meta["inputs"][0]["name"] == "input"  # the manifest's signature, before any load
    ready = server.get("/v2/models/a/ready")
    assert ready.status_code == 503 and "not loaded" in ready.text
    assert index(server)["a"]["state"] == "UNAVAILABLE" and "loads on its first request" in index(server)["a"]["reason"]

    # The first request loads it and is answered, not refused, saying how long it waited.
    first = server.post("/v2/models/a/infer", infer_body(ROWS))
    assert first.status_code == 200 and float(first.headers["x-model-cold-start-ms"]) > 0
    again = server.post("/v2/models/a/infer", infer_body(ROWS))
    assert again.status_code == 200 and "x-model-cold-start-ms" not in again.headers
    assert server.get("/v2/models/a/ready").status_code == 200
    assert index(server)["a"]["state"] == "READY"
    assert server.metric("modeldock_pool_cold_starts_total", model="a") == 1

    # The others in turn: they do not all fit, so `a`, the least recently used, goes first.
    for name in SIX[1:]:
        assert infer(server, name)[0] == 200
        assert server.metric("modeldock_pool_memory_used_bytes") <= BUDGET
    assert server.metric("modeldock_pool_evictions_total", model="a") == 1
    entry = index(server)["a"]
    assert entry["state"] == "UNAVAILABLE" and "least recently used" in entry["reason"]
    assert server.get("/v2/models/a").json()["properties"]["state"] == "available"

    # It comes back on its next request (a cold start again), answering as before.
    assert infer(server, "a")[0] == 200
    assert server.metric("modeldock_pool_cold_starts_total", model="a") == 2
    assert server.metric("modeldock_pool_memory_used_bytes") <= BUDGET

    # A model larger than the whole budget is refused with the reason; nothing else is unloaded.
    evicted = sum(server.metric("modeldock_pool_evictions_total", model=m) for m in SIX)
    status, text = infer(server, "huge")
    assert status == 507 and "more than the memory budget of 24.0 MiB" in text
    assert "memory budget" in index(server)["huge"]["reason"]
    assert sum(server.metric("modeldock_pool_evictions_total", model=m) for m in SIX) == evicted

    # The pinned model has workers of its own, ready from the start and never evicted.
    assert server.get("/v2/models/pinned/ready").status_code == 200
    assert infer(server, "pinned")[0] == 200
    assert server.metric("modeldock_pool_cold_starts_total", model="pinned") == 0
    log = server.log_path.read_text()
    assert "a: loaded on demand in" in log and "a: unloaded (least recently used) to make room" in log
