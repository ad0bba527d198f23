"""A batch sampler that shards by rank and resumes mid-epoch from two integers.

Each epoch is one permutation of the dataset drawn from ``(seed, epoch)``. Optimiser step ``k`` of the
epoch uses the global batch ``perm[k·W·B : (k+1)·W·B]`` (``W`` processes, ``B`` samples per process) and
rank ``r`` loads its slice ``[r·B : (r+1)·B]`` of it. So 2 ranks × batch B see exactly the samples of
1 rank × batch 2B, and the position in an epoch is just "how many batches were consumed": resuming
skips that many batches by index arithmetic, without reading or decoding any of them.

The incomplete last global batch of an epoch is dropped, so every rank runs the same number of steps
(DDP needs that) and every batch has the same size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_permutation(size: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The order of the dataset's ``size`` indices in ``epoch`` (int64 tensor of shape (size,))."""
    # SeedSequence mixes (seed, epoch) so (seed=0, epoch=1) and (seed=1, epoch=0) differ.
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]) >> 1
    return torch.randperm(size, generator=torch.Generator().manual_seed(mixed))


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one rank, for one epoch, starting at a given batch.

    Args:
        size: number of samples in the dataset.
        batch_size: samples per batch on this rank.
        seed: seed of the epoch permutations.
        rank, world_size: this process and how many there are (1 without DDP).
        shuffle: False takes the dataset in order (evaluation, debugging).

    Use ``set_state(epoch, position)`` before iterating: the iterator yields the batches of ``epoch``
    from batch number ``position`` on (a fresh epoch has position 0).
    """

    def __init__(self, *, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if size < batch_size * world_size:
            raise ValueError(
                f"the dataset has {size} samples, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)"
            )
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0  # set by set_state

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def set_state(self, epoch: int, position: int) -> None:
        """Start the next iteration at batch ``position`` of ``epoch``."""
        if not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"position {position} is outside an epoch of {self.batches_per_epoch} batches")
        self.epoch = epoch
        self.position = position

    def __len__(self) -> int:
        return self.batches_per_epoch - self.position

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = epoch_permutation(self.size, seed=self.seed, epoch=self.epoch)
        else:
            order = torch.arange(self.size)
        global_batch = self.batch_size * self.world_size
        for k in range(self.position, self.batches_per_epoch):
            start = k * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()
