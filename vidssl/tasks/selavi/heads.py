"""SeLaVi's classification heads and the combined prediction of the modalities that labels come from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cluster_head(in_dim: int, num_clusters: int, *, hidden: int = 512, dropout: float = 0.3) -> nn.Sequential:
    """One head: Dropout, Linear (no bias), BatchNorm, ReLU, Dropout, Linear to K logits (SeLaVi's MLP
    head); ``hidden=0``: a single Linear with bias (SeLaVi's linear heads, no dropout).

    Inputs: B×in_dim pooled features. Outputs: B×K logits. The last module is the Linear whose rows are
    the clusters (permuted by the modality alignment).
    """
    if hidden == 0:
        return nn.Sequential(nn.Linear(in_dim, num_clusters))
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_dim, hidden, bias=False),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_clusters),
    )


def combined_scores(
    logits: dict[str, list[Tensor]], streams: Sequence[str] | None = None, dtype: torch.dtype = torch.float32
) -> list[Tensor]:
    """Per head, the mean over ``streams`` of the log-probabilities: ½·log(p_v·p_a) for two modalities,
    which Sinkhorn at ε turns into the kernel (p_v·p_a)^(1/(2ε)) — SeLaVi's PS_v·PS_a raised to λ/2.

    Inputs: {stream: [B×K_h] logits per head}. Outputs: [B×K_h] per head in ``dtype``.
    """
    streams = list(logits) if streams is None else list(streams)
    num_heads = len(logits[streams[0]])
    return [
        torch.stack([F.log_softmax(logits[s][h].to(dtype), dim=1) for s in streams]).mean(0)
        for h in range(num_heads)
    ]


def stream_losses(logits: dict[str, list[Tensor]], targets: Sequence[Tensor]) -> dict[str, Tensor]:
    """Per stream, the cross-entropy of each head's logits to its targets, averaged over heads.

    Inputs: {stream: [B×K_h]}, targets per head: B labels (long) or B×K_h distributions.
    Outputs: {stream: scalar}; their mean is the SeLaVi loss (½·L_video + ½·L_audio with two modalities).
    """
    return {s: torch.stack([F.cross_entropy(x, t) for x, t in zip(per_head, targets, strict=True)]).mean()
            for s, per_head in logits.items()}
