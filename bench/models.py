"""The benchmark's models, published into a store: the PEERS MLP, a compute-bound CNN, digits."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model_store import ModelStore


class PeersMLP(nn.Module):
    """Linear(64,256) -> ReLU -> Linear(256,256) -> ReLU -> Linear(256,10): overhead-bound."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """ResNet-18-like (8 basic blocks, 32..256 channels) on 3x64x64: compute-bound (~8 ms/sample)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        chans, layers, cin = (32, 64, 128, 256), [], 32
        for i, c in enumerate(chans):
            layers += [_Block(cin, c, 1 if i == 0 else 2), _Block(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))  # type: ignore[no-any-return]


def build_store(root: Path, which: tuple[str, ...] = ("mlp", "cnn", "digits")) -> dict[str, tuple[int, ...]]:
    """Publish the models (ONNX only; the server picks ONNX on CPU); returns input shapes per row."""
    torch.manual_seed(0)
    store = ModelStore(root)
    shapes: dict[str, tuple[int, ...]] = {}
    if "mlp" in which:
        store.publish("mlp", PeersMLP().eval(), example_inputs=torch.randn(2, 64), formats=("onnx",))
        shapes["mlp"] = (64,)
    if "cnn" in which:
        store.publish(
            "cnn", SmallResNet().eval(), example_inputs=torch.randn(2, 3, 64, 64), formats=("onnx",), atol=1e-3
        )
        shapes["cnn"] = (3, 64, 64)
    if "digits" in which:
        from model_store.demo import ConvNet

        store.publish("digits", ConvNet().eval(), example_inputs=torch.rand(2, 1, 8, 8), formats=("onnx",))
        shapes["digits"] = (1, 8, 8)
    return shapes
