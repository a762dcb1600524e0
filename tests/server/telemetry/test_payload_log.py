"""The payload log in-process: sampling, what a line holds, the bounded queue, the rotating file."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from server.config import ConfigError, ServerConfig
from server.protocol import InferRequest
from server.telemetry import build_observers
from server.telemetry.logfile import RotatingFile
from server.telemetry.payload_log import PayloadLog

from .events import TRACE_ID, TRACEPARENT, event


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("modeldock_payload_log_dropped_total", {"reason": reason}) or 0.0


def test_a_line_per_request_with_its_ids_timings_and_tensors(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    log = PayloadLog(str(path), tensors="inline")
    e = event(headers={"traceparent": TRACEPARENT})
    log(e)
    log(event(status=400, request=None, batch_rows=0))
    log.close()
    ok, refused = lines(path)
    assert ok["model"] == "tiny" and ok["version"] == "2" and ok["status"] == 200 and ok["protocol"] == "rest"
    assert ok["id"] == "req-7" and ok["trace_id"] == TRACE_ID
    assert ok["queue_s"] == 0.002 and ok["infer_s"] == 0.001 and ok["batch_rows"] == 8 and ok["duration_s"] == 0.004
    assert ok["time"].startswith(str(np.datetime64(e.started_ns, "ns"))[:19])
    [x] = ok["inputs"]
    assert x["name"] == "input" and x["datatype"] == "FP32" and x["shape"] == [2, 4]
    assert x["data"] == list(range(8))
    [y] = ok["outputs"]
    assert y["shape"] == [2, 3] and np.allclose(np.reshape(y["data"], (2, 3)), e.outputs["output"])  # type: ignore[index]
    assert refused["status"] == 400 and refused["error"] == "something went wrong"
    assert refused["inputs"] is None and refused["outputs"] is None and refused["trace_id"] is None


def test_hashes_match_the_binary_tensor_bytes(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    words = np.array([b"hello", "wörld".encode()], dtype=object)
    numbers = np.array([[1.5, -2.0]], dtype=np.float64)
    log = PayloadLog(str(path), responses=False)
    log(event(request=InferRequest({"text": words, "x": numbers}, id="h", rows=1)))
    log.close()
    [line] = lines(path)
    assert "outputs" not in line  # requests only
    text, x = line["inputs"]
    assert text["datatype"] == "BYTES" and x["datatype"] == "FP64"
    triton_layout = b"".join(struct.pack("<I", len(w)) + w for w in words)
    assert text["sha256"] == hashlib.sha256(triton_layout).hexdigest()
    assert x["sha256"] == hashlib.sha256(numbers.astype("<f8").tobytes()).hexdigest()
    assert "data" not in x


def test_inline_values_stay_json(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    special = np.array([np.nan, np.inf, 1.25], dtype=np.float16)
    flags = np.array([True, False])
    log = PayloadLog(str(path), tensors="inline", responses=False)
    log(event(request=InferRequest({"h": special, "b": flags, "s": np.array([b"\xff"], dtype=object)}, rows=1)))
    log.close()
    h, b, s = lines(path)[0]["inputs"]
    assert h["data"] == [None, None, 1.25] and h["datatype"] == "FP16"
    assert b["data"] == [True, False] and s["data"] == ["\ufffd"]


def test_a_sample_logs_about_that_share(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    random.seed(18)
    log = PayloadLog(str(path), sample=0.25)
    for _ in range(2000):
        log(event())
    log.close()
    assert 350 < len(lines(path)) < 650  # binomial(2000, 0.25): 500 +- 19 (sd)


def drain(reader: int, log: PayloadLog) -> list[bytes]:
    """Read the stalled pipe to its end while the log closes: every line it had written."""
    received = b""
    os.set_blocking(reader, True)
    closer = threading.Thread(target=log.close)
    closer.start()
    while True:  # EOF only means no writer has the pipe open now: done once the log is closed
        closed = not closer.is_alive()
        chunk = os.read(reader, 1 << 16)
        received += chunk
        if not chunk and closed:
            break
        if not chunk:
            time.sleep(0.01)
    closer.join(10)
    os.close(reader)
    return received.splitlines()


def test_a_writer_that_falls_behind_drops_and_counts_never_waits(tmp_path: Path) -> None:
    """A reader that stops reading: the writer blocks on a full pipe, the queue fills, and every
    further request is dropped and counted while the request path carries on."""
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    big = np.zeros((1, 4096), np.float32)  # ~16 KB per inline line: the 64 KiB pipe fills fast
    log = PayloadLog(str(fifo), tensors="inline", responses=False, queue_size=4)
    before = dropped("queue_full")
    sent = 200
    done = threading.Event()

    def requests() -> None:
        for _ in range(sent):
            log(event(request=InferRequest({"input": big}, id="r", rows=1)))
        done.set()

    threading.Thread(target=requests, daemon=True).start()
    assert done.wait(60), "the request path waited for the payload log"
    lost = dropped("queue_full") - before
    assert lost > sent // 2  # the rest: in the pipe, the queue and the writer's blocked batch
    kept = drain(reader, log)
    assert len(kept) == sent - lost and all(json.loads(line)["id"] == "r" for line in kept)


def test_tensor_bytes_bound_the_queue_too(tmp_path: Path) -> None:
    """Queued records hold their tensors: past `max_pending_bytes` of them, records are dropped
    even though the queue has room."""
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = PayloadLog(str(fifo), tensors="inline", responses=False, queue_size=1000, max_pending_bytes=1 << 20)
    before = dropped("queue_full")
    huge = np.zeros((1, 300_000), np.float32)  # 1.2 MB each, over the bound alone; its line fills the pipe
    for _ in range(50):
        log(event(request=InferRequest({"input": huge}, id="huge", rows=1)))
    assert dropped("queue_full") - before == 49  # only the first is taken while it is pending
    assert [json.loads(line)["id"] for line in drain(reader, log)] == ["huge"]


def test_the_file_rotates_within_its_cap(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    cap = 64 << 10
    log = PayloadLog(str(path), tensors="inline", max_bytes=cap)
    for i in range(400):
        log(event(request=InferRequest({"input": np.full((1, 64), i, np.float32)}, id=str(i), rows=1)))
    log.close()
    files = sorted(tmp_path.glob("payload.jsonl*"))
    names = {f.name for f in files}
    assert {"payload.jsonl", "payload.jsonl.1", "payload.jsonl.2", "payload.jsonl.3"} <= names
    assert "payload.jsonl.4" not in names
    logs = [f for f in files if not f.name.endswith(".lock")]
    assert sum(f.stat().st_size for f in logs) <= cap
    newest = lines(path)
    assert newest[-1]["id"] == "399"  # the newest lines are kept, the oldest rotated away
    for f in logs:
        assert all(isinstance(json.loads(line)["id"], str) for line in f.read_text().splitlines())


def test_a_line_larger_than_a_file_is_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    log = PayloadLog(str(path), tensors="inline", max_bytes=4 << 10)  # 1 KiB per file
    before = dropped("too_large")
    log(event(request=InferRequest({"input": np.zeros((1, 1000), np.float32)}, rows=1)))
    log(event())
    log.close()
    assert dropped("too_large") - before == 1
    assert len(lines(path)) == 1


def _append(path: str, tag: int, count: int) -> None:
    f = RotatingFile(path, max_bytes=32 << 10)
    for i in range(count):
        f.write([json.dumps({"p": tag, "i": i, "pad": "x" * 100}).encode() + b"\n"])
    f.close()


def test_processes_share_one_rotating_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(path, tag, 600)) for tag in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    logs = [f for f in tmp_path.iterdir() if not f.name.endswith(".lock")]
    assert len(logs) == 4
    assert sum(f.stat().st_size for f in logs) <= (32 << 10) + 3 * 200  # a line per process may overshoot
    for f in logs:  # whole lines only: no two processes' writes interleaved
        for line in f.read_text().splitlines():
            assert set(json.loads(line)) == {"p", "i", "pad"}


def test_payload_log_settings(tmp_path: Path) -> None:
    cfg = ServerConfig(payload_log=str(tmp_path / "p.jsonl"), payload_log_sample=0.5, payload_log_tensors="inline")
    [log] = build_observers(cfg)
    assert isinstance(log, PayloadLog) and log.sample == 0.5 and log.tensors == "inline"
    assert log._thread is None  # started on first use, in the process that logs
    with pytest.raises(ConfigError, match="is a folder"):
        build_observers(ServerConfig(payload_log=str(tmp_path)))
    with pytest.raises(ConfigError, match="cannot be written"):
        build_observers(ServerConfig(payload_log=str(tmp_path / "missing" / "p.jsonl")))


def test_stdout_gets_whole_lines(capfd: pytest.CaptureFixture[str]) -> None:
    log = PayloadLog("stdout")
    for _ in range(3):
        log(event(headers={"traceparent": TRACEPARENT}))
    log.close()
    out = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [line["trace_id"] for line in out] == [TRACE_ID] * 3
