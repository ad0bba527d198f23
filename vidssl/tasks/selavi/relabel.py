"""SeLaVi's pass over the whole training dataset: the features every scheduled relabelling is computed
from, and the batch-norm warm-up before the first one.

``make_loader`` is the engine's (``on_train_step_start``): ``make_loader(**DataLoader kwargs)`` loads the
training dataset, with its training augmentations, as SeLaVi's relabelling does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from vidssl import distributed

MakeLoader = Callable[..., Iterable[dict[str, Any]]]


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def dataset_features(
    embed: Callable[[dict[str, Tensor]], dict[str, Tensor]], make_loader: MakeLoader, *, dataset_size: int,
    batch_size: int, device: torch.device,
) -> tuple[dict[str, Tensor], Tensor]:
    """Head inputs of every clip of this rank's shard (indices rank, rank + world, …), in order.

    ``embed`` runs in whatever mode the caller set (eval for relabelling). A clip the dataset replaced
    by another (an unreadable file) is kept once, under the index it was loaded as.
    Outputs: ({stream: M×dim} fp32, dataset indices M).
    """
    shard = list(range(distributed.rank(), dataset_size, distributed.world_size()))
    if not shard:
        raise ValueError(f"SeLaVi: {dataset_size} clips cannot be shared by {distributed.world_size()} ranks")
    features: dict[str, list[Tensor]] = {}
    indices: list[Tensor] = []
    for batch in make_loader(batch_size=batch_size, sampler=shard, shuffle=False):
        batch = _to(batch, device)
        for stream, x in embed(batch).items():
            features.setdefault(stream, []).append(x.float())
        indices.append(batch["index"].long())
    index = torch.cat(indices)
    keep = _first_occurrences(index)
    return {s: torch.cat(f)[keep] for s, f in features.items()}, index[keep]


def _first_occurrences(index: Tensor) -> Tensor:
    """Positions of the first occurrence of each value of ``index``, in order."""
    seen: set[int] = set()
    keep = []
    for position, value in enumerate(index.tolist()):
        if value not in seen:
            seen.add(value)
            keep.append(position)
    return torch.as_tensor(keep, dtype=torch.long, device=index.device)


@torch.no_grad()
def warm_up_batchnorm(
    module: nn.Module, forward: Callable[[dict[str, Tensor]], Any], make_loader: MakeLoader, *, batches: int,
    device: torch.device, seed: int,
) -> None:
    """Run ``batches`` shuffled training batches through ``forward`` in train mode without gradients, so
    the batch-norm running statistics fit the data before the first eval-mode relabelling (SeLaVi warms
    up 20 batches before training). Restores the module's mode."""
    if batches <= 0:
        return
    was_training = module.training
    module.train()
    generator = torch.Generator().manual_seed(seed + distributed.rank())
    done = 0
    while done < batches:
        # Whole batches only: batch norm cannot take a batch of one clip in train mode.
        before = done
        for batch in make_loader(shuffle=True, generator=generator, drop_last=True):
            forward(_to(batch, device))
            done += 1
            if done == batches:
                break
        if done == before:
            raise ValueError("SeLaVi: the dataset holds fewer clips than one training batch; the batch-norm "
                             "warm-up needs at least one (or set bn_warmup_batches=0)")
    module.train(was_training)
