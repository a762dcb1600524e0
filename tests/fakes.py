"""Fake models for tests: importable factories the store and server can rebuild."""

from __future__ import annotations

import torch
from torch import nn

from model_store import model_factory


class TinyMLP(nn.Module):
    """[N, 4] FP32 -> [N, 3]; `seed` fixes its weights so two instances can differ."""

    def __init__(self, seed: int = 0, hidden: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(4, hidden)
        self.l2 = nn.Linear(hidden, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


class NoisyModel(nn.Module):
    """Different outputs every call: no export can reproduce its golden outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(x) + torch.rand(x.shape[0], 3)


@model_factory
def make_tiny(seed: int = 0) -> nn.Module:
    return TinyMLP(seed=seed)


def example_input(rows: int = 3) -> torch.Tensor:
    return torch.randn(rows, 4, generator=torch.Generator().manual_seed(1))


class Malicious:
    """Unpickling this runs `open(path, 'w')`: the proof a loader must never unpickle it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


FAIL_VALUE = -777.0
SLEEP_VALUE = 999.0


class FlakyModel(TinyMLP):
    """Raises when a row starts with FAIL_VALUE: a model failing on one valid input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] == FAIL_VALUE).any()):
            raise RuntimeError("flaky model hit its failing input")
        return super().forward(x)


class SlowModel(TinyMLP):
    """Sleeps 60 s when a row starts with SLEEP_VALUE: a hung predict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] == SLEEP_VALUE).any()):
            import time

            time.sleep(60)
        return super().forward(x)


PAUSE_VALUE = 77.0
PAUSE_S = 2.0


class PausingModel(TinyMLP):
    """Takes PAUSE_S when a row starts with PAUSE_VALUE: a batch long enough to queue behind."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] == PAUSE_VALUE).any()):
            import time

            time.sleep(PAUSE_S)
        return super().forward(x)


class FakeRuntime:
    """A Runtime whose predict is any function: for batching tests without a model file."""

    format = "fake"
    device = "cpu"

    def __init__(self, fn):  # type: ignore[no-untyped-def]
        self.fn = fn
        self.calls: list[int] = []

    def predict(self, inputs):  # type: ignore[no-untyped-def]
        self.calls.append(len(inputs["input"]))
        return {"output": self.fn(inputs["input"])}

    def describe(self) -> dict[str, str]:
        return {"runtime": "fake"}


class SlowLoadModel(TinyMLP):
    """Takes LOAD_SECONDS to build: a version load long enough to interrupt."""

    LOAD_SECONDS = 4.0

    def __init__(self, seed: int = 0, hidden: int = 8) -> None:
        import time

        time.sleep(self.LOAD_SECONDS)
        super().__init__(seed, hidden)


# ---- fakes for the server's rooms, used by in-process unit tests --------------------------
# (TF Serving tests its manager with a fake loader; these play the same part.)


def fake_manifest(name: str = "m", version: int = 1, stamp: int = 0):  # type: ignore[no-untyped-def]
    from model_store.manifest import Examples, Manifest
    from model_store.signature import Signature

    sig = Signature.from_dict(
        {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
        }
    )
    return Manifest(name, version, "now", (), sig, Examples("e", f"{stamp:064d}", 0))


def fake_verdict(version: int, stamp: int = 0, name: str = "m"):  # type: ignore[no-untyped-def]
    """A verdict on files that need not exist; `stamp` stands for the files' identity."""
    from pathlib import Path

    from server.ipc.messages import Verdict

    manifest = fake_manifest(name, version, stamp)
    return Verdict(version, Path("/nonexistent") / name / str(version), manifest, (("f", stamp, 0),))


class FakeSource:
    """A store source whose next answers the test sets; raises `error` when set."""

    def __init__(self) -> None:
        from server.control.source import Aspired
        from server.control.version_set import VersionSet

        self.next = Aspired()
        self.error: Exception | None = None
        self.versions = VersionSet()
        self.excluded = lambda version, manifest: ""  # set by ModelControl: a rollout's rejections
        self.also: set[int] = set()

    def offer(self, version: int | None, valid: list[int] | None = None, stamp: int = 0, **kw: object) -> None:
        """The store holds `valid` (default: just `version`); the policy picks `version`."""
        from server.control.source import Aspired

        valid = valid if valid is not None else ([version] if version else [])
        self.stamps = {v: stamp for v in valid}
        self.next = Aspired({}, version, valid, **kw)  # type: ignore[arg-type]

    def poll(self, also=()):  # type: ignore[no-untyped-def]
        """Like StoreSource.poll: verdicts for the policy's pick (skipping excluded versions,
        falling back to the newest other one) and for `also`."""
        import dataclasses

        if self.error is not None:
            raise self.error
        aspired = self.next
        choice = aspired.default

        def manifest(v: int):  # type: ignore[no-untyped-def]
            return fake_manifest("m", v, self.stamps.get(v, 0))

        if choice is not None and self.excluded(choice, manifest(choice)):
            others = [v for v in aspired.valid if not self.excluded(v, manifest(v))]
            choice = max(others, default=None)
        wanted = set(self.versions.select(aspired.valid, choice)) | (set(also) & set(aspired.valid))
        verdicts = {v: fake_verdict(v, self.stamps.get(v, 0)) for v in sorted(wanted)}
        set_aside = {v: why for v in aspired.valid if (why := self.excluded(v, manifest(v)))}
        return dataclasses.replace(aspired, verdicts=verdicts, default=choice, set_aside=set_aside)


class FakeLoader:
    """Loads any verdict at once into a FakeRuntime servable, or raises the reason set for it."""

    def __init__(self) -> None:
        self.refuse: dict[int, str] = {}
        self.crash: set[int] = set()
        self.loads: list[int] = []

    def load(self, verdict):  # type: ignore[no-untyped-def]
        from server.worker.loader import Rejected, Servable

        self.loads.append(verdict.version)
        if verdict.version in self.crash:
            raise RuntimeError("loader crashed")
        if verdict.version in self.refuse:
            raise Rejected(self.refuse[verdict.version])
        version = verdict.version
        runtime = FakeRuntime(lambda x: x + version)
        return Servable("m", version, verdict.manifest, runtime, "onnx", "cpu", "fake", 0.0, verdict.stats)


class FakeRequests:
    """A request channel backed by a list; `get` raises queue.Empty when it runs dry."""

    def __init__(self, items: list[object] | None = None) -> None:
        self.items = list(items or [])
        self.waits: list[float | None] = []
        self.cancels: set[tuple[int, int]] = set()  # (consumer, uid) whose client left

    def cancelled(self, consumer: int, uid: int) -> bool:
        return (consumer, uid) in self.cancels

    def get(self, block: bool = True, timeout: float | None = None):  # type: ignore[no-untyped-def]
        from queue import Empty

        self.waits.append(timeout if block else 0.0)
        if not self.items:
            raise Empty
        return self.items.pop(0)


class FakeAnswers:
    """Collects what a worker sends back, per HTTP process."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, tuple[str, int], list[object]]] = []

    def send(self, consumer: int, writer: tuple[str, int], answers: list[object]) -> None:
        self.sent.append((consumer, writer, answers))


class RecordingTransport:
    """An asyncio transport that records each write (for the one-write wire, server/http/wire.py)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


class FakeRequestChannel:
    """The submitting side of a request channel: what was put and what was cancelled."""

    def __init__(self) -> None:
        self.put_items: list[object] = []
        self.cancels: list[tuple[int, int]] = []

    def put(self, item: object) -> None:
        self.put_items.append(item)

    def cancel(self, consumer: int, uid: int) -> None:
        self.cancels.append((consumer, uid))


class FakeResponses:
    """The answers' side: a test answers a request by its uid, as a worker's answer would."""

    def __init__(self) -> None:
        self.waiting: dict[int, object] = {}
        self._uid = 0

    def start_reading(self, consumer: int) -> None:
        pass

    def new_uid(self) -> int:
        self._uid += 1
        return self._uid

    def on_answer(self, uid: int, model: str, timeout: float, call: object) -> None:
        self.waiting[uid] = call

    def answer(self, uid: int, result: object) -> None:
        self.waiting.pop(uid)(result)  # type: ignore[operator]
