"""The state SeLaVi carries between steps: the table of every clip's pseudo-labels (scheduled labels)
and a queue of recent clips' features (online labels).

Both are saved as a module's extra state rather than as buffers: DDP overwrites every buffer with rank
0's copy before each forward, but a queue holds each rank's own clips, and the label table changes size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vidssl import distributed
from vidssl.losses import ring_write


class LabelTable(nn.Module):
    """H×N hard labels, one column per dataset index; -1 where a clip has none yet."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.labels = torch.full((num_heads, 0), -1, dtype=torch.long)

    def lookup(self, indices: Tensor) -> Tensor:
        """Labels H×B of the clips ``indices`` (-1 where none)."""
        table = self.labels.to(indices.device)
        out = torch.full((table.shape[0], len(indices)), -1, dtype=torch.long, device=indices.device)
        inside = indices < table.shape[1]
        out[:, inside] = table[:, indices[inside]]
        return out

    @torch.no_grad()
    def update(self, indices: Tensor, labels: Tensor) -> float:
        """Write labels H×M of clips ``indices`` from every rank (one all-reduce of H×N ints merges them);
        returns the fraction of head-0 labels that changed, among clips that had one."""
        device = indices.device
        size = max(int(indices.max()) + 1 if len(indices) else 0, self.labels.shape[1])
        size = int(distributed.all_reduce_max(torch.tensor([size], device=device)).item())
        old = torch.full((self.labels.shape[0], size), -1, dtype=torch.long, device=device)
        old[:, : self.labels.shape[1]] = self.labels.to(device)
        fresh = torch.full_like(old, -1)
        fresh[:, indices] = labels
        distributed.all_reduce_max(fresh)
        merged = torch.where(fresh >= 0, fresh, old)
        seen = (old[0] >= 0) & (fresh[0] >= 0)
        changed = float(((old[0] != merged[0]) & seen).sum())
        self.labels = merged
        return changed / max(float(seen.sum()), 1.0)

    def get_extra_state(self) -> dict[str, Any]:
        return {"labels": self.labels.cpu()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.labels = state["labels"].clone()


class FeatureQueue(nn.Module):
    """A ring buffer of the head inputs of the last ``size`` clips (SwAV's queue), per stream.

    A checkpoint holds rank 0's queue; it is restored only into a single-process run saved by a single
    process (a DDP run refills its queues within ``size`` clips after a resume).
    """

    def __init__(self, dims: dict[str, int], size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"FeatureQueue: size must be >= 1, got {size}")
        self.dims = dict(dims)
        self.size = size
        self._clear()

    def _clear(self) -> None:
        self.filled = 0
        self.pointer = 0  # the next row to overwrite
        self.features = {s: torch.zeros(self.size, d) for s, d in self.dims.items()}

    def __len__(self) -> int:
        return self.filled

    @torch.no_grad()
    def push(self, features: dict[str, Tensor]) -> None:
        """Store a batch {stream: B×dim} (detached; a batch larger than the queue keeps its newest rows)."""
        rows = len(next(iter(features.values())))
        pointer = self.pointer
        for stream, bank in self.features.items():
            if bank.device != features[stream].device:
                bank = self.features[stream] = bank.to(features[stream].device)
            pointer = ring_write(bank, self.pointer, features[stream].detach().float())
        self.pointer = pointer
        self.filled = min(self.filled + rows, self.size)

    def contents(self) -> dict[str, Tensor]:
        """The filled rows {stream: M×dim}."""
        return {s: f[: self.filled] for s, f in self.features.items()}

    def get_extra_state(self) -> dict[str, Any]:
        return {"features": {s: f.cpu() for s, f in self.features.items()}, "filled": self.filled,
                "pointer": self.pointer, "world_size": distributed.world_size()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["world_size"] == 1 and distributed.world_size() == 1:
            self.features = {s: f.clone() for s, f in state["features"].items()}
            self.filled, self.pointer = int(state["filled"]), int(state["pointer"])
        else:
            self._clear()
