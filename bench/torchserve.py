"""modeldock against real TorchServe 0.12 on the same archive, same client, same run.

    python -m bench.torchserve --out docs [--rounds 2] [--seconds 10]

One image-classifier archive, made by the real `torch-model-archiver` (a small ImageNet-shaped
CNN, traced, with `index_to_name.json` and TorchServe's built-in `image_classifier` handler):
TorchServe serves the `.mar`; modeldock serves what `modeldock import-mar` made of it, behind
`server.handlers.torchserve:ImageClassifier`. Both answer `POST /predictions/vision` with a JPEG
body. Both get one worker, batches of up to 8 and 5 ms of batching delay (TorchServe's
`batch_size`/`max_batch_delay`, modeldock's `max_batch_size`/`batch_timeout_s`); each picks its
own intra-op threads, as a user running it would.

First the parity table (the same 8 JPEGs to both: same top-5 labels, in order, probabilities
within 1e-5), then req/s at C=32 and p50 at C=1, the servers taking turns per round. Needs
TorchServe in `.venv/peers/torchserve` (`scripts/install_torchserve.sh`) and Java 17.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT, BenchError, ServerProcess, free_port
from bench.procs import tree_cpu

TS_VENV = ROOT / ".venv" / "peers" / "torchserve"
BATCH, DELAY_MS = 8, 5


def post(port: int, body: bytes, model: str = "vision") -> tuple[int, Any]:
    """One `/predictions` call: the status and the JSON answer (the text of an error)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predictions/{model}", data=body, method="POST")
    req.add_header("Content-Type", "image/jpeg")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:  # a timeout, a refused connection: not an answer
        return 0, str(e)


def build_archive(work: Path) -> Path:
    """The archive both servers serve (tests/torchserve's TinyVision, traced)."""
    import torch

    from tests.torchserve.conftest import LABELS, make_mar
    from tests.torchserve.vision_model import TinyVision

    torch.manual_seed(0)
    model = TinyVision().eval()
    torch.jit.save(torch.jit.trace(model, torch.rand(2, 3, 224, 224)), work / "vision.pt")  # type: ignore[no-untyped-call]
    (work / "index_to_name.json").write_text(json.dumps(LABELS))
    out = work / "mar"
    out.mkdir(exist_ok=True)
    return make_mar(out, "vision", work / "vision.pt", "image_classifier", work / "index_to_name.json")


class TorchServe(ServerProcess):
    ready_path = "/ping"


def start_torchserve(archives: list[Path], work: Path) -> TorchServe:
    """TorchServe serving each archive as the model of its file name, one worker each, batching
    as modeldock does in this bench; ready once each model answers an image."""
    if not (TS_VENV / "bin" / "torchserve").exists():
        raise BenchError(f"TorchServe is not installed in {TS_VENV}: run scripts/install_torchserve.sh")
    port, mgmt, metrics = free_port(), free_port(), free_port()
    home = work / "ts"
    shutil.rmtree(home, ignore_errors=True)
    (home / "store").mkdir(parents=True)
    models = {}
    for archive in archives:
        shutil.copy(archive, home / "store" / archive.name)
        models[archive.stem] = {"1.0": {"marName": archive.name, "minWorkers": 1, "maxWorkers": 1,
                                        "batchSize": BATCH, "maxBatchDelay": DELAY_MS}}  # fmt: skip
    (home / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{port}\nmanagement_address=http://127.0.0.1:{mgmt}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\nmodel_store={home / 'store'}\n"
        f"load_models={','.join(a.name for a in archives)}\n"
        f"disable_token_authorization=true\nenable_envvars_config=false\ndefault_workers_per_model=1\n"
        f"models={json.dumps(models)}\n"
    )
    env = {
        **os.environ,
        "PATH": f"{TS_VENV / 'bin'}:{os.environ['PATH']}",
        "TS_CONFIG_FILE": str(home / "config.properties"),
    }
    env.pop("PYTHONPATH", None)
    cmd = [str(TS_VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
           "--model-store", str(home / "store"), "--ts-config", str(home / "config.properties")]  # fmt: skip
    server = TorchServe("torchserve", cmd, port, work, env=env, ready_s=240)
    deadline = time.monotonic() + 180  # /ping is healthy before the models' workers are up
    for archive in archives:
        while post(port, jpeg_image(0), archive.stem)[0] != 200:
            if time.monotonic() > deadline:
                server.stop()
                raise BenchError(f"TorchServe's {archive.stem} did not answer within 180 s; its log: {server.log}")
            time.sleep(0.5)
    return server


def start_modeldock(archive: Path, work: Path) -> ServerProcess:
    from model_store import ModelStore
    from model_store.mar_import import import_mar

    store_dir = work / "models"
    shutil.rmtree(store_dir, ignore_errors=True)
    report = import_mar(ModelStore(store_dir), archive)
    cfg = work / "modeldock.yaml"
    cfg.write_text(
        "defaults:\n  rollout: {mode: 'off'}\nmodels:\n  vision:\n"
        f"    handler: {report.handler}\n    max_batch_size: {BATCH}\n    batch_timeout_s: {DELAY_MS / 1000}\n"
    )
    port = free_port()
    cmd = [PY, "-m", "server", "serve", "--store", str(store_dir), "--port", str(port), "--config", str(cfg)]
    cmd += ["--cache-dir", str(work / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELDOCK_GRPC_PORT": "0"}
    return ServerProcess("modeldock", cmd, port, work, env=env)


def jpeg_image(seed: int) -> bytes:
    from tests.torchserve.conftest import jpeg

    return jpeg(seed, (320 + 16 * seed, 240))


def parity(ts: ServerProcess, md: ServerProcess, n: int = 8) -> list[dict[str, Any]]:
    rows = []
    for seed in range(n):
        image = jpeg_image(seed)
        (s1, a), (s2, b) = post(ts.port, image), post(md.port, image)
        same_labels = s1 == s2 == 200 and list(a) == list(b)
        diff = max(abs(a[k] - b[k]) for k in a) if same_labels else float("inf")
        rows.append({"image": seed, "torchserve": a, "modeldock": b, "same_labels": same_labels, "max_abs_diff": diff})
    return rows


def load(server: ServerProcess, c: int, requests: int, seconds: float, work: Path) -> dict[str, Any]:
    body = work / "body.jpg"
    body.write_bytes(jpeg_image(1))
    cmd = [PY, "-m", "bench.client", f"http://127.0.0.1:{server.port}/predictions/vision", str(body)]
    cmd += ["--concurrency", str(c), "--requests", str(requests), "--max-seconds", str(seconds)]
    cmd += ["--header", "Content-Type:image/jpeg"]
    before = tree_cpu(server.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = tree_cpu(server.pid)
    server.check_alive()
    if out.returncode != 0:
        raise BenchError(f"load client failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    spent = sum(after[p] - before.get(p, 0.0) for p in after)
    result["server_cpu_ms_per_req"] = 1000 * spent / max(1, result["requests"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-torchserve-{os.getpid()}"
    work.mkdir(parents=True)
    archive = build_archive(work)
    rows: list[dict[str, Any]] = []
    ts = start_torchserve([archive], work)
    try:
        md = start_modeldock(archive, work)
        try:
            table = parity(ts, md)
            for r in range(args.rounds):
                for c, requests in ((1, 2000), (32, 20000)):
                    for kind, server in (("torchserve", ts), ("modeldock", md)) if r % 2 == 0 else (("modeldock", md), ("torchserve", ts)):  # fmt: skip
                        load(server, c, 200, 2, work)  # warm
                        res = load(server, c, requests, args.seconds, work)
                        rows.append({"kind": kind, "round": r, "concurrency": c, **res})
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            md.stop()
    finally:
        ts.stop()
    print(report(table, rows))
    with (args.out / "benchmarks-torchserve.jsonl").open("w") as f:
        for row in table:
            f.write(json.dumps({"parity": row}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def _median(rows: list[dict[str, Any]], kind: str, c: int, key: str) -> float:
    vals = sorted(float(r[key]) for r in rows if r["kind"] == kind and r["concurrency"] == c)
    return vals[len(vals) // 2] if vals else float("nan")


def report(table: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    same = sum(r["same_labels"] for r in table)
    worst = max(r["max_abs_diff"] for r in table)
    lines = [
        f"parity: {same}/{len(table)} images with the same top-5 labels in order; largest probability difference {worst:.2e}"
    ]
    lines.append("| | TorchServe | modeldock | ratio |")
    lines.append("| --- | --- | --- | --- |")
    for c, key, label in ((32, "throughput", "req/s at C=32"), (1, "p50_ms", "p50 ms at C=1")):
        t, m = _median(rows, "torchserve", c, key), _median(rows, "modeldock", c, key)
        ratio = m / t if key == "throughput" else t / m
        lines.append(f"| {label} | {t:.1f} | {m:.1f} | {ratio:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
