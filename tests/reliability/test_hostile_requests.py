"""Hand-written hostile requests against a real server: each refused with a 4xx naming the
problem, and the server keeps serving (how fast refusals are is a benchmark's business)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest

from tests.server.conftest import ServerProcess, infer_body

GOOD = infer_body([[0.1, 0.2, 0.3, 0.4]])
LYING = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":64}}]}'


def raw(server: ServerProcess, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send while reading: a server may answer (413) and close before a large body is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:

        def send() -> None:
            with contextlib.suppress(OSError):
                s.sendall(request)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return head.encode() + b"\r\n" + body


CASES = [
    ("malformed JSON", "/v2/models/tiny/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    (
        "strings for numbers",
        "/v2/models/tiny/infer",
        json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]}
        ).encode(),
        {},
        400,
        "non-numeric",
    ),
    (
        "negative dimension",
        "/v2/models/tiny/infer",
        json.dumps(
            {"inputs": [{"name": "input", "shape": [-1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        ).encode(),
        {},
        400,
        "negative",
    ),
    (
        "absurd shape",
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "input", "shape": [10**12, 64], "datatype": "FP32", "data": [1]}]}).encode(),
        {},
        400,
        "over the limit",
    ),
    (
        "huge dimension product",
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "input", "shape": [2**62, 2**62], "datatype": "FP32", "data": [1]}]}).encode(),
        {},
        400,
        "over the limit",
    ),
    ("empty inputs", "/v2/models/tiny/infer", json.dumps({"inputs": []}).encode(), {}, 400, "non-empty"),
    (
        "zero rows",
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": []}]}).encode(),
        {},
        400,
        "no rows",
    ),
    (
        "unknown datatype",
        "/v2/models/tiny/infer",
        json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "BF16", "data": [1, 2, 3, 4]}]}).encode(),
        {},
        400,
        "datatype",
    ),
    (
        "header length too large",
        "/v2/models/tiny/infer",
        json.dumps(GOOD).encode(),
        {"Inference-Header-Content-Length": "999999"},
        400,
        "outside the body",
    ),
    (
        "header length not a number",
        "/v2/models/tiny/infer",
        json.dumps(GOOD).encode(),
        {"Inference-Header-Content-Length": "-x"},
        400,
        "not an integer",
    ),
    (
        "binary size lies",
        "/v2/models/tiny/infer",
        LYING + b"\0" * 16,
        {"Inference-Header-Content-Length": str(len(LYING))},
        400,
        "runs past the end",
    ),
    ("dot-dot model", "/v2/models/../infer", json.dumps(GOOD).encode(), {}, 404, ""),
    ("encoded slash", "/v2/models/..%2F..%2Fetc/infer", json.dumps(GOOD).encode(), {}, 404, ""),
    ("version traversal", "/v2/models/tiny/versions/..%2F1/infer", json.dumps(GOOD).encode(), {}, 404, ""),
    ("negative version", "/v2/models/tiny/versions/-1/infer", json.dumps(GOOD).encode(), {}, 404, "no version"),
    # U+00B2 and U+0661 pass str.isdigit(); int() refuses the first (it was a 500) and reads the second as 1.
    ("superscript version", "/v2/models/tiny/versions/%C2%B2/infer", json.dumps(GOOD).encode(), {}, 404, "no version"),
    ("Arabic-Indic version", "/v2/models/tiny/versions/%D9%A1/infer", json.dumps(GOOD).encode(), {}, 404, "no version"),
    ("body over the limit", "/v2/models/tiny/infer", b"{" + b" " * (2 << 20) + b"}", {}, 413, "over the limit"),
]


@pytest.mark.parametrize(("label", "path", "body", "headers", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_hostile_request_is_refused_with_a_message(
    tiny_server: ServerProcess, label: str, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    got, content = raw(tiny_server, post(path, body, headers))
    assert got == status, content[:300]
    assert message in json.loads(content)["error"]
    assert tiny_server.post("/v2/models/tiny/infer", GOOD).status_code == 200


def test_a_slow_client_does_not_hold_up_others(tiny_server: ServerProcess) -> None:
    """Other requests are answered while one client is still trickling its body in (about 2 s):
    were the server stuck reading it, none would complete until the last byte arrived."""
    body = json.dumps(GOOD).encode()
    result: dict[str, object] = {}
    trickling, sent = threading.Event(), threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", tiny_server.port), timeout=30) as s:
            s.sendall(
                post("/v2/models/tiny/infer", b"", {})[:-2].replace(
                    b"Content-Length: 0", f"Content-Length: {len(body)}".encode()
                )
                + b"\r\n"
            )
            s.sendall(body[:8])
            trickling.set()
            for i in range(8, len(body), 8):
                s.sendall(body[i : i + 8])
                time.sleep(2 / (len(body) / 8))
            sent.set()
            result["reply"] = s.recv(65536)

    t = threading.Thread(target=trickle)
    t.start()
    assert trickling.wait(30)
    during = 0
    for _ in range(500):
        if sent.is_set():
            break
        assert tiny_server.post("/v2/models/tiny/infer", GOOD).status_code == 200
        during += not sent.is_set()  # answered before the slow body was complete
    t.join(30)
    assert sent.is_set() and during > 10, f"{during} requests answered while the body trickled in"
    assert b" 200 " in result["reply"]  # type: ignore[operator]
