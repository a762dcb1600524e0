"""Models of the archives the TorchServe tests build. This file is also the archives' `--model-file`:
the user's own copy of an eager archive's model file, as docs/torchserve.md tells them to keep."""

import torch


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
