"""MoCo on clips: a query view must find its key among a queue of keys from past batches.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020 (v2 with an
MLP head; on video as in Feichtenhofer et al., CVPR 2021). The key encoder is a copy of the query
encoder and head that follows them by an exponential moving average (``on_train_step_end``), so keys
drift slowly and a large queue of them stays consistent. The queue is a ``MoCoQueue``; under DDP it
enqueues the keys of every rank, so every rank holds the same queue.

Not done here: MoCo's shuffled batch norm across GPUs. The key encoder's batch statistics come from the
key batch alone (separate from the query batch), which is what shuffling aims at within one process.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vidssl.encoders import pool
from vidssl.losses import MoCoQueue, info_nce, momentum_update
from vidssl.monitors import embedding_monitors, similarity_gap

HeadFactory = Callable[..., nn.Module]


class MoCo(nn.Module):
    """Clip-level MoCo with a momentum key encoder and a queue of negatives.

    Args:
        encoder: a video encoder (``B×C×T×H×W → B×D×T'×H'×W'``, with ``out_channels``).
        head: builds the projection head, called as ``head(in_dim=encoder.out_channels, out_dim=embed_dim)``.
        embed_dim: size of the embedding (and of the queue's keys).
        queue_size: how many past keys serve as negatives.
        temperature: InfoNCE temperature.
        momentum: the key encoder keeps this fraction of itself at each step (MoCo: 0.999).

    Inputs: batch with ``video`` (queries) and ``video2`` (keys), each B×C×T×H×W.
    Outputs: {"loss": InfoNCE against the queue, "accuracy": how often the key beats every queued key,
        "embedding_std", "embedding_rankme" (of the queries), "similarity_gap" (query·key minus
        query·queue, cosine)}: see `vidssl.monitors`.
    """

    def __init__(self, *, encoder: nn.Module, head: HeadFactory, embed_dim: int = 128, queue_size: int = 4096,
                 temperature: float = 0.07, momentum: float = 0.999) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.encoder = encoder
        self.head = head(in_dim=encoder.out_channels, out_dim=embed_dim)
        # The key branch starts as an exact copy and is never trained by gradients.
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.queue = MoCoQueue(embed_dim, queue_size)
        self.temperature = temperature
        self.momentum = momentum

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """Query embedding: B×C×T×H×W → B×embed_dim, L2-normalised."""
        return F.normalize(self.head(pool(self.encoder(video))), dim=1)

    @torch.no_grad()
    def embed_key(self, video: torch.Tensor) -> torch.Tensor:
        """Key embedding from the momentum branch: B×C×T×H×W → B×embed_dim, L2-normalised."""
        return F.normalize(self.key_head(pool(self.key_encoder(video))), dim=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        q = self.embed(batch["video"])  # (B, E)
        k = self.embed_key(batch["video2"])  # (B, E), no gradient
        negatives = self.queue.negatives()  # (Q, E), a copy: the enqueue below cannot alter the graph
        loss = info_nce(q, k, negatives, temperature=self.temperature, normalize=False)
        with torch.no_grad():
            positive = (q * k).sum(dim=1).float()
            hardest = (q.float() @ negatives.T.float()).max(dim=1).values
            accuracy = (positive > hardest).float().mean()
            monitors = {**embedding_monitors(q), "similarity_gap": similarity_gap(q, k, negatives)}
        if self.training:
            self.queue.enqueue(k)
        return {"loss": loss, "accuracy": accuracy, **monitors}

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        """After each optimiser step the key branch moves towards the query branch."""
        momentum_update(self.encoder, self.key_encoder, self.momentum)
        momentum_update(self.head, self.key_head, self.momentum)
