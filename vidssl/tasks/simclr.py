"""SimCLR on clips: two augmented views of one clip must find each other among the batch.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020; on
video as in CVRL (Qian et al., CVPR 2021): both views come from the same clip and differ by their
spatial augmentation (``VideoDataset(views=2)``). Encoder → global average pool → projection head →
NT-Xent over the 2N views of the batch (2N−2 negatives per anchor). Under DDP the negatives are this
process's batch (as with per-GPU batch norm); the gradients are averaged by DDP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidssl.encoders import pool
from vidssl.losses import nt_xent
from vidssl.monitors import embedding_monitors, similarity_gap

HeadFactory = Callable[..., nn.Module]


def pair_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """How often a view's most similar other view is its partner (the NT-Xent task, as a diagnostic).

    Inputs: z1, z2 N×D (any scale; compared by cosine similarity). Outputs: scalar in [0, 1].
    """
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return (sim.argmax(dim=1) == partner).float().mean()


class SimCLR(nn.Module):
    """Clip-level SimCLR.

    Args:
        encoder: a video encoder (``B×C×T×H×W → B×D×T'×H'×W'``, with ``out_channels``).
        head: builds the projection head, called as ``head(in_dim=encoder.out_channels, out_dim=embed_dim)``
            (a Hydra partial of ``vidssl.encoders.heads.MLPHead``).
        embed_dim: size of the embedding the loss compares.
        temperature: NT-Xent temperature.

    Inputs: batch with ``video`` and ``video2``, each B×C×T×H×W (two views of the same clips).
    Outputs: {"loss": NT-Xent, "accuracy": pair accuracy, and the health monitors of `vidssl.monitors`:
        "embedding_std" (mean per-dimension std of the normalised embeddings; near 0 means collapse),
        "embedding_rankme" (effective rank of the 2N embeddings), "similarity_gap" (positive minus
        negative cosine similarity)}.
    """

    def __init__(self, *, encoder: nn.Module, head: HeadFactory, embed_dim: int = 128,
                 temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.head = head(in_dim=encoder.out_channels, out_dim=embed_dim)
        self.embed_dim = embed_dim
        self.temperature = temperature

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """B×C×T×H×W → B×embed_dim (not normalised)."""
        return self.head(pool(self.encoder(video)))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        n = batch["video"].shape[0]
        # One encoder pass over both views: batch norm then sees all 2N clips, as in SimCLR.
        z = self.embed(torch.cat([batch["video"], batch["video2"]]))  # (2N, E)
        z1, z2 = z[:n], z[n:]
        with torch.no_grad():
            accuracy = pair_accuracy(z1.float(), z2.float())
            monitors = {**embedding_monitors(z), "similarity_gap": similarity_gap(z1, z2)}
        return {"loss": nt_xent(z1, z2, self.temperature), "accuracy": accuracy, **monitors}
