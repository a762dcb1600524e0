"""The demo's image handler on modeldock against the same handler code as a plain LitServe app.

    python -m bench.handlers [--out docs] [--store MODELS] [--requests N] [--max-seconds S]
                             [--concurrency 1,32] [--threads T] [--only plain|modeldock]

Both sides decode a PNG, run the digits model with onnxruntime and answer
`{"label": "7", "probability": ...}`, with `server.handlers.digits:DigitsHandler`'s own
`decode_request`/`batch`/`unbatch`/`encode_response`:

- modeldock: `POST /v1/models/digits:predict` with `{"instances": [{"image": {"b64": ...}}]}`,
  the handler named in the config, one worker, dynamic batching up to 32;
- plain LitServe: an `ls.LitAPI` calling the same methods around an onnxruntime session with the
  same thread count, `POST /predict` with `{"image": {"b64": ...}}`, LitServe's defaults but
  batching on (`max_batch_size=32`, `batch_timeout=0.005`).

Each server runs alone, on a 127.0.0.1 free port, is checked to answer "7" before it is measured
and is stopped by its PID; the client runs in its own process, bounded in requests and seconds.
Prints one JSON line per run and the modeldock/plain ratios; `--out DIR` also writes
DIR/handlers.jsonl. Without `--store`, the demo is trained into a temporary store first.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import litserve as ls

from bench.common import PY, ROOT, BenchError, ServerProcess, free_port
from bench.procs import tree_cpu

IMAGE = ROOT / "docs" / "digit-7.png"
MODEL = "digits"
HANDLER = "server.handlers.digits:DigitsHandler"
MAX_BATCH = 32
BATCH_TIMEOUT = 0.005


# ---- the plain LitServe app (run in its own process by `--serve-plain`) ----------------------------
class PlainDigits(ls.LitAPI):  # type: ignore[misc]
    """The handler's code as a LitServe user would write it (module level: LitServe pickles it)."""

    def __init__(self, folder: Path, threads: int) -> None:
        super().__init__(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT)
        self.folder, self.threads = folder, threads

    def setup(self, device: str) -> None:
        import onnxruntime as ort

        from model_store.manifest import Manifest
        from server.handlers.digits import DigitsHandler

        self.handler = DigitsHandler()
        self.handler.setup(Manifest.load(self.folder), self.folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    # Unannotated, as in LitServe's examples: LitServe builds its route from these annotations.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return self.handler.decode_request(request)

    def batch(self, inputs: list[Any]) -> Any:
        return self.handler.batch(inputs)

    def predict(self, x: Any) -> Any:
        return dict(zip(self.names, self.session.run(self.names, x), strict=True))

    def unbatch(self, output: Any) -> Any:
        rows = next(iter(output.values())).shape[0]
        return self.handler.unbatch(output, [1] * rows)

    def encode_response(self, output):  # type: ignore[no-untyped-def]
        return self.handler.encode_response(output)


def serve_plain(folder: Path, port: int, threads: int) -> None:
    """LitServe's defaults, batching on."""
    server = ls.LitServer(PlainDigits(folder, threads), accelerator="cpu")
    server.run(host="127.0.0.1", port=port, generate_client_file=False)


class PlainServer(ServerProcess):
    """LitServe answers `/health`, not the v2 readiness route."""

    ready_path = "/health"


# ---- the two servers ----------------------------------------------------------------------------
def start(kind: str, store: Path, work: Path, threads: int) -> tuple[ServerProcess, str, bytes]:
    """A ready server, the URL to load and the body of every request."""
    port = free_port()
    image = {"image": {"b64": base64.b64encode(IMAGE.read_bytes()).decode()}}
    if kind == "plain":
        version = max(int(p.name) for p in (store / MODEL).iterdir() if p.name.isdigit())
        cmd = [PY, "-m", "bench.handlers", "--serve-plain", str(store / MODEL / str(version))]
        cmd += ["--port", str(port), "--threads", str(threads)]
        return PlainServer(kind, cmd, port, work), f"http://127.0.0.1:{port}/predict", json.dumps(image).encode()
    config = work / "modeldock-handlers.yaml"
    config.write_text(
        "api_servers: 1\n"
        "grpc_port: 0\n"
        "defaults:\n"
        "  workers: 1\n"
        f"  threads: {threads}\n"
        f"  max_batch_size: {MAX_BATCH}\n"
        "models:\n"
        f"  {MODEL}:\n"
        f"    handler: {HANDLER}\n"
    )
    cmd = [PY, "-m", "server", "serve", "--store", str(store), "--config", str(config), "--port", str(port)]
    server = ServerProcess(kind, [*cmd, "--cache-dir", str(work / "cache")], port, work)
    url = f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict"
    return server, url, json.dumps({"instances": [image]}).encode()


def answer(kind: str, url: str, body: bytes) -> dict[str, Any]:
    """One request; the prediction, which must be the digit 7."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    got = doc["predictions"][0] if kind == "modeldock" else doc
    if not isinstance(got, dict) or got.get("label") != "7":
        raise BenchError(f"{kind} answered {doc!r} for the image of a 7")
    return got


def measure(
    server: ServerProcess, url: str, body: bytes, c: int, requests: int, max_s: float, work: Path
) -> dict[str, Any]:
    body_file = work / f"body-{server.kind}.json"
    body_file.write_bytes(body)
    cmd = [PY, "-m", "bench.client", url, str(body_file), "--concurrency", str(c)]
    cmd += ["--requests", str(requests), "--max-seconds", str(max_s), "--header", "Content-Type:application/json"]
    before = tree_cpu(server.pid)
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=max_s + 60
    )
    after = tree_cpu(server.pid)
    server.check_alive()
    if out.returncode != 0:
        raise BenchError(f"load client failed ({out.returncode}):\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    spent = sum(after[p] - before.get(p, 0.0) for p in after)
    result["server_cpu_ms_per_req"] = 1000 * spent / max(1, result["requests"])
    return result


def run(args: argparse.Namespace, store: Path, work: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    kinds = [args.only] if args.only else ["modeldock", "plain"]
    for kind in kinds:  # each server alone while measured
        server, url, body = start(kind, store, work, args.threads)
        try:
            first = answer(kind, url, body)
            measure(server, url, body, 1, min(50, args.requests), args.max_seconds, work)  # warm-up
            for c in args.concurrency:
                row = {"kind": kind, "concurrency": c, "threads": args.threads, "answer": first}
                row |= measure(server, url, body, c, args.requests, args.max_seconds, work)
                if row["errors"] or not row["requests"]:
                    raise BenchError(f"{kind} at C={c}: {row['errors']} errors, {row['requests']} answers")
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            server.stop()
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[str]:
    """`modeldock / plain` per concurrency: throughput (higher is better) and p50, p99 latency."""
    by = {(r["kind"], r["concurrency"]): r for r in rows}
    lines = [
        "| C | modeldock req/s | plain LitServe req/s | throughput ratio | p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted({r["concurrency"] for r in rows}):
        m, p = by.get(("modeldock", c)), by.get(("plain", c))
        if m and p:
            lines.append(
                f"| {c} | {m['throughput']:.0f} | {p['throughput']:.0f} | {m['throughput'] / p['throughput']:.2f} "
                f"| {m['p50_ms'] / p['p50_ms']:.2f} | {m['p99_ms'] / p['p99_ms']:.2f} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="a store holding the digits demo (default: train one)")
    ap.add_argument("--out", type=Path, help="also write OUT/handlers.jsonl")
    ap.add_argument("--requests", type=int, default=3000, help="per run, at most")
    ap.add_argument("--max-seconds", type=float, default=8.0, help="per run, at most")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads on both sides")
    ap.add_argument("--only", choices=["modeldock", "plain"])
    ap.add_argument("--serve-plain", type=Path, help=argparse.SUPPRESS)  # the plain server's own process
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_plain:
        serve_plain(args.serve_plain, args.port, args.threads)
        return
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-handlers-") as tmp:
        work = Path(tmp)
        store = args.store
        if store is None:
            from model_store.demo import run_demo

            store = work / "models"
            run_demo(store)
        try:
            rows = run(args, store.resolve(), work)
        except BenchError as e:
            sys.exit(f"bench.handlers: {e}")
    print("\n".join(ratios(rows)))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "handlers.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
