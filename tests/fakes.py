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
