"""Toy datasets for trainer tests: each sample is drawn from (epoch, index), as VideoDataset draws its clips, so a
resumed run sees exactly the samples an uninterrupted one would."""

from __future__ import annotations

import torch


class SeededSamples(torch.utils.data.Dataset):
    """``n`` samples; ``sample(i, g)`` builds sample ``i`` from a generator seeded by (epoch, i)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        return self.sample(i, torch.Generator().manual_seed(1000 * self.epoch + i))

    def sample(self, i: int, g: torch.Generator) -> dict:
        raise NotImplementedError
