"""What the rollout benchmark and the swap soak share: retrained versions of the MLP, landed the
way `ModelStore.publish` lands them, a paced client in its own process, and a watch on the
model's rollout as its metadata reports it.

Retrains are published beforehand (`ModelStore.publish`, ONNX) into a side store, so that export
and golden checks do not take CPU from the server under test; one lands in the served store by a
copy into a reserved staging folder and an atomic rename, which is how `publish` ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import PY, ROOT, BenchError, ServerProcess
from bench.models import PeersMLP
from bench.procs import rss_mib
from bench.servers import roles
from model_store import ModelStore
from model_store.store import reserve_version

MODEL = "mlp"
NOISE = 1e-3  # weight nudge of a "retrain": the trained MLP keeps >= 0.95 arg-max agreement


def bodies(rows: int = 64, seed: int = 1) -> list[dict[str, Any]]:
    """Single-row requests on varied inputs (agreement between versions means something)."""
    x = np.random.default_rng(seed).random((rows, 64), dtype=np.float32)
    return [{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": r.tolist()}]} for r in x]


def write_bodies(path: Path) -> Path:
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies()))
    return path


@dataclass
class Prepared:
    store: Path  # the side store: version 1 is the base model, 2.. its retrains
    retrains: list[int]
    agreement: float  # lowest arg-max agreement between any two versions on the bench's rows


def _trained(steps: int = 300) -> PeersMLP:
    """The MLP trained briefly on a synthetic 10-class task, so that its class scores have margins
    (an untrained net's are near ties: any nudge flips labels, which no retrain does)."""
    torch.manual_seed(0)
    task = torch.randn(64, 10, generator=torch.Generator().manual_seed(7))
    data = torch.Generator().manual_seed(0)
    model = PeersMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.rand(128, 64, generator=data)
        loss = torch.nn.functional.cross_entropy(model(x), ((x - 0.5) @ task).argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def prepare(root: Path, retrains: int) -> Prepared:
    """Publish the base MLP and `retrains` nudged copies of it; check that they agree."""
    base = _trained()
    example = torch.rand(2, 64, generator=torch.Generator().manual_seed(3))
    store = ModelStore(root)
    store.publish(MODEL, base, example_inputs=example, formats=("onnx",))
    rows = torch.tensor(np.array([b["inputs"][0]["data"] for b in bodies()], dtype=np.float32))
    labels = []
    with torch.no_grad():
        labels.append(torch.cat([base(rows), base(example)]).argmax(1))
        for seed in range(retrains):
            model = PeersMLP().eval()
            model.load_state_dict(base.state_dict())
            gen = torch.Generator().manual_seed(100 + seed)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * NOISE)
            store.publish(MODEL, model, example_inputs=example, formats=("onnx",))
            labels.append(torch.cat([model(rows), model(example)]).argmax(1))
    agreement = min(float((a == b).float().mean()) for a in labels for b in labels)
    examples_agree = all(bool((a[-2:] == b[-2:]).all()) for a in labels for b in labels)
    if agreement < 0.95 or not examples_agree:
        raise BenchError(f"the prepared retrains disagree too much (arg-max agreement {agreement:.3f})")
    return Prepared(root, list(range(2, retrains + 2)), agreement)


def land(prepared: Prepared, which: int, store: Path) -> int:
    """Version `which` of the side store lands in `store` as its next version; returns its number."""
    model_dir = store / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    version, staging = reserve_version(model_dir)
    shutil.copytree(prepared.store / MODEL / str(which), staging, dirs_exist_ok=True)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    os.rename(staging, model_dir / str(version))
    return version


def get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def infer_version(port: int) -> str:
    """One unversioned request; the version that answered it."""
    body = json.dumps(bodies(1)[0]).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return str(json.loads(r.read()).get("model_version", ""))


def decisions(port: int) -> dict[str, float]:
    """`modeldock_rollout_decisions_total` by result, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modeldock_rollout_decisions_total{") and f'model="{MODEL}"' in line:
            result = line.split('result="', 1)[1].split('"', 1)[0]
            found[result] = found.get(result, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def rss_by_role(server: ServerProcess) -> dict[str, float]:
    """RSS (MiB) of every process of a modeldock server, keyed 'role' ('role 2' for a second one)."""
    out: dict[str, float] = {}
    for pid, role in sorted(roles("modeldock", server.pid, server.port).items()):
        key, n = role, 2
        while key in out:
            key, n = f"{role} {n}", n + 1
        out[key] = round(rss_mib(pid), 1)
    return out


@dataclass
class Watch:
    """Polls the model's metadata every `every` s; keeps each change of (phase, candidate, status,
    default version) with the wall-clock time it was first seen."""

    port: int
    every: float = 0.1
    changes: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        last: tuple[Any, ...] = ()
        while not self._stop.wait(self.every):
            try:
                props = get_json(self.port, f"/v2/models/{MODEL}")["properties"]
            except (OSError, ValueError, KeyError):
                continue
            ro = props.get("rollout") or {}
            now = (ro.get("phase", "stable"), ro.get("candidate"), ro.get("status", ""), props.get("default_version"))
            if now != last:
                last = now
                keys = ("phase", "candidate", "status", "default")
                self.changes.append({"t": time.time(), **dict(zip(keys, now, strict=True))})

    def wait_decided(self, version: int, timeout: float) -> tuple[str, float]:
        """('promoted' | 'rejected', when first seen) for `version`; raises after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for c in list(self.changes):
                for result in ("promoted", "rejected"):
                    if c["status"].startswith(f"version {version} {result}"):
                        return result, float(c["t"])
            time.sleep(0.05)
        raise BenchError(f"version {version} not decided after {timeout:.0f} s; last status: {self.changes[-1:]}")

    def phases(self, version: int) -> dict[str, tuple[float, float]]:
        """Wall-clock spans in which `version` was the candidate, per phase (shadow, canary)."""
        spans: dict[str, tuple[float, float]] = {}
        for c, nxt in zip(self.changes, [*self.changes[1:], None], strict=True):
            if c["candidate"] == str(version) and c["phase"] in ("shadow", "canary"):
                end = nxt["t"] if nxt is not None else time.time()
                begin = spans.get(c["phase"], (c["t"], end))[0]
                spans[c["phase"]] = (begin, end)
        return spans


class Paced:
    """A `bench.paced` client running in the background, stopped by its PID."""

    def __init__(self, port: int, work: Path, rate: float, max_s: float, tag: str) -> None:
        self.log = work / f"paced-{tag}.json"
        body_file = write_bodies(work / "bodies.jsonl")
        cmd = [PY, "-m", "bench.paced", f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", str(body_file)]
        cmd += ["--rate", str(rate), "--requests", str(int(rate * max_s) + 1), "--max-seconds", str(max_s)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([*cmd, "--log", str(self.log)], stdout=subprocess.PIPE, text=True, env=env)

    def finish(self) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """Stop it (SIGTERM: it finishes what is in flight) and read its summary and log."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise BenchError("the paced client did not stop within 90 s") from None
        if self.proc.returncode != 0:
            raise BenchError(f"the paced client failed ({self.proc.returncode})")
        return json.loads(out), json.loads(self.log.read_text())


def p99(latencies: list[float]) -> float:
    """p99 in ms (nan when there are none)."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
