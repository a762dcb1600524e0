"""The image classifier of the TorchServe tests; also an eager archive's `--model-file` (TorchServe
wants exactly one model class per model file)."""

import torch


class TinyVision(torch.nn.Module):
    """An ImageNet-shaped classifier ([n, 3, 224, 224] in, 10 classes out), small enough to trace fast."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
