"""Contrastive Predictive Coding (van den Oord, Li & Vinyals 2018) on blocks of video.

A clip cut into `num_seq` blocks gives one pooled embedding z_t per block; a GRU summarises the observed
blocks z_1..z_c into a context c; one linear map W_k per future step k predicts z_{c+k} as W_k c, and the
log-bilinear score z_jᵀ W_k c is trained with InfoNCE: the true future block must win against every
other (clip, step) of the batch.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vidssl.encoders import pool
from vidssl.losses import dense_info_nce
from vidssl.monitors import embedding_monitors, similarity_gap
from vidssl.tasks.dpc import block_clips


class CPC(nn.Module):
    """CPC with a video encoder per block, a GRU context and one bilinear predictor per future step.

    The paper (audio/images) scores exp(z_{t+k}ᵀ W_k c_t) with W_k a linear map per step, a GRU context
    of 256 (audio) units and negatives drawn from the batch; here the blocks are video clips
    (`num_seq` blocks × `seq_len` frames, as DPC cuts them: 8 × 5 at stride 3, 128×128, R2D3D-18), the
    context is the GRU state after the first `num_seq - pred_step` blocks, and the negatives are every
    other (clip, future step) in the batch — one (B·K)×(B·K) matrix product (`dense_info_nce`).

    Args:
        encoder: video encoder, `B×C×T×H×W -> B×D×T'×H'×W'` with `out_channels = D`.
        num_seq: blocks per clip (the sampler's `num_seq`).
        pred_step: future blocks predicted from the context (K).
        hidden_size: GRU units (the context c).
        temperature: InfoNCE temperature (the paper: 1).
        normalize: score cosine similarities instead of raw bilinear products (the paper: False).

    Inputs: batch["video"] B×num_seq×C×seq_len×H×W (the block layout) or B×C×(num_seq·seq_len)×H×W
        (from `BlockSampler`), as `vidssl.tasks.dpc.block_clips` reads them.
    Outputs: {"loss": InfoNCE, "accuracy": fraction of (clip, step) whose true future scores highest,
        "embedding_std", "embedding_rankme" (of the B·N block embeddings), "similarity_gap" (prediction to
        its true future minus to the other futures, cosine)}: see `vidssl.monitors`.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        num_seq: int = 8,
        pred_step: int = 3,
        hidden_size: int = 256,
        temperature: float = 1.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= pred_step < num_seq:
            raise ValueError(f"CPC: pred_step must be in [1, num_seq - 1] = [1, {num_seq - 1}], got {pred_step}")
        if temperature <= 0:
            raise ValueError(f"CPC: temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.num_seq = num_seq
        self.pred_step = pred_step
        self.temperature = temperature
        self.normalize = normalize
        dim = encoder.out_channels
        self.context = nn.GRU(dim, hidden_size, batch_first=True)
        # W_k: one bilinear map per future step, from the context to the embedding space.
        self.predictors = nn.ModuleList(nn.Linear(hidden_size, dim, bias=False) for _ in range(pred_step))

    def embed(self, video: Tensor) -> Tensor:
        """Pooled embedding of every block. Inputs: B×N×C×L×H×W or B×C×(N·L)×H×W. Outputs: B×N×D."""
        z = pool(self.encoder(block_clips(video, self.num_seq, "CPC: batch['video']")))  # (B·N, D)
        return rearrange(z, "(b n) d -> b n d", n=self.num_seq)

    def predict(self, z: Tensor) -> Tensor:
        """W_k c for k = 1..K from the context of the observed blocks. Inputs: B×N×D. Outputs: B×K×D."""
        _, last = self.context(z[:, : self.num_seq - self.pred_step])  # last: (1, B, hidden)
        c = last[0]  # (B, hidden)
        return torch.stack([w_k(c) for w_k in self.predictors], dim=1)  # (B, K, D)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z = self.embed(batch["video"])  # (B, N, D)
        pred = self.predict(z)  # (B, K, D)
        target = z[:, self.num_seq - self.pred_step :]  # (B, K, D)
        loss, accuracy = dense_info_nce(pred, target, temperature=self.temperature, normalize=self.normalize)
        with torch.no_grad():
            monitors = {**embedding_monitors(z.flatten(0, 1)),
                        "similarity_gap": similarity_gap(pred.flatten(0, 1), target.flatten(0, 1))}
        return {"loss": loss, "accuracy": accuracy, **monitors}
