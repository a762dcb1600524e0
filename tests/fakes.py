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
