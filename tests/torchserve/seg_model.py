"""The image segmenter of the TorchServe tests: torchvision's output shape, `{"out": [n, k, h, w]}`."""

import torch


class TinySegmenter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}
