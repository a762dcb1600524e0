"""Models of the archives the TorchServe tests build. This file is also the archives' `--model-file`:
the user's own copy of an eager archive's model file, as docs/torchserve.md tells them to keep."""

import torch


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TinyVision(torch.nn.Module):
    """An ImageNet-shaped classifier ([n, 3, 224, 224] in, 10 classes out), small enough to trace fast."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
