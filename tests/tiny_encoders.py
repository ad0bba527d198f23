"""Tiny encoders for fast task tests (importable from any test: tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


class TinyVideoEncoder(nn.Module):
    """B×3×T×H×W → B×8×T×H/4×W/4, no normalisation layer (so blocks never see each other's stats)."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(3, 8, (1, 4, 4), stride=(1, 4, 4)), nn.ReLU(), nn.Conv3d(8, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyFrameEncoder(nn.Module):
    """A trainable stride-8 frame encoder: B×3×H×W → B×16×H/8×W/8."""

    out_channels = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 8, stride=8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpaceToDepth(nn.Module):
    """A parameter-free stride-8 encoder: each 8×8 cell's pixels are its feature (distinct on noise)."""

    out_channels = 3 * 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_unshuffle(x, 8)
