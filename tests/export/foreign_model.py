"""A model that is not one of ours, for the export tests: RGB input in NHWC layout, two outputs.

It stands for the typical model a user brings: trained elsewhere with channels-last input, a
segmentation head and a per-image "tool present" score. Importable by path (``foreign_model.py:Name``).
"""

from __future__ import annotations

import torch
from torch import nn


class TwoHeadNHWC(nn.Module):
    """``(N, H, W, 3)`` RGB in; ``seg`` logits ``(N, n_classes, H, W)`` and ``presence`` ``(N, 1)`` out."""

    def __init__(self, n_classes: int = 2, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.seg = nn.Conv2d(width, n_classes, 1)
        self.presence = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x.permute(0, 3, 1, 2))
        return self.seg(f), torch.sigmoid(self.presence(f.mean(dim=(2, 3))))


def make_trained(seed: int = 0, n_classes: int = 2) -> TwoHeadNHWC:
    """A model with non-trivial weights and BatchNorm statistics (as if trained), in eval mode."""
    torch.manual_seed(seed)
    model = TwoHeadNHWC(n_classes)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 32, 32, 3) * 2 - 0.5)
    return model.eval()
