"""Contrastive random walk (CRW): correspondence from the cycle-consistency of time.

Jabri, Owens & Efros, "Space-Time Correspondence as a Contrastive Random Walk", NeurIPS 2020 — the
cycle-consistency-of-time idea of Wang, Jabri & Efros (CVPR 2019) made differentiable.

Each frame is a set of nodes (patches, or the cells of a stride-8 dense feature map). A walker steps
from frame t to t+1 with the softmax of the affinities between their L2-normalised node embeddings
(temperature τ), walks forward to t+k and back along the palindrome t→…→t+k→…→t, and is asked to
come home: the k-step return matrix is trained with cross-entropy against the identity. Every cycle
length k = 1..T-1 contributes (multi-length cycles), and edge dropout removes random transitions
so that the walk cannot rely on a single path.

The pure functions below (`affinity_logits`, `transition_matrices`, `palindrome_walks`,
`cycle_loss`) are the method; `CRW` only embeds frames into nodes and calls them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# log(0) guard for return probabilities, as small as float32 allows without underflowing to 0
_EPS = 1e-20


def affinity_logits(nodes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scaled affinities between the nodes of each pair of neighbouring frames.

    Inputs:  nodes B×D×T×N (L2-normalised along D)
    Outputs: B×(T-1)×N×N, entry [b, t, n, m] = <node n of frame t, node m of frame t+1> / temperature
    """
    return torch.einsum("bctn,bctm->btnm", nodes[:, :, :-1], nodes[:, :, 1:]) / temperature


def _drop_edges(logits: torch.Tensor, rate: float) -> torch.Tensor:
    # A dropped edge gets the most negative finite logit rather than -inf: a row whose every edge
    # is dropped then becomes uniform instead of NaN, so every row stays a probability distribution.
    if rate <= 0:
        return logits
    dropped = torch.rand_like(logits) < rate
    return logits.masked_fill(dropped, torch.finfo(logits.dtype).min)


def transition_matrices(
    logits: torch.Tensor, edge_dropout: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-stochastic transition matrices forward (t→t+1) and backward (t+1→t).

    Inputs:  logits B×(T-1)×N×N from `affinity_logits`; edge_dropout, the probability that an edge
             is removed before the softmax (drawn independently for the two directions)
    Outputs: (forward, backward), each B×(T-1)×N×N with rows summing to 1;
             forward[b, t, n, m] = P(node n of frame t → node m of frame t+1),
             backward[b, t, m, n] = P(node m of frame t+1 → node n of frame t)
    """
    forward = _drop_edges(logits, edge_dropout).softmax(dim=-1)
    backward = _drop_edges(logits.transpose(-1, -2), edge_dropout).softmax(dim=-1)
    return forward, backward


def palindrome_walks(forward: torch.Tensor, backward: torch.Tensor) -> list[torch.Tensor]:
    """Return-probability matrices of the palindrome walks 0→k→0 for every cycle length k.

    Inputs:  forward, backward B×(T-1)×N×N from `transition_matrices`
    Outputs: list of T-1 tensors B×N×N; element k-1 is
             forward[0] @ … @ forward[k-1] @ backward[k-1] @ … @ backward[0],
             whose entry [b, n, m] is the probability that a walk from node n of frame 0 ends at node
             m of frame 0 (the target is m = n)
    """
    walks = []
    # Both products grow by one step per cycle length: out = P(0→k+1), back = P(k+1→0).
    out, back = forward[:, 0], backward[:, 0]
    walks.append(out @ back)
    for k in range(1, forward.shape[1]):
        out = out @ forward[:, k]
        back = backward[:, k] @ back
        walks.append(out @ back)
    return walks


def cycle_loss(walks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of each walk's return against the identity, averaged over cycle lengths.

    Inputs:  walks, list of B×N×N return-probability matrices (rows sum to 1)
    Outputs: (loss scalar, accuracy scalar, accuracy of the longest cycle scalar) where accuracy is
             the fraction of start nodes whose most probable end node is themselves
    """
    n = walks[0].shape[-1]
    target = torch.arange(n, device=walks[0].device)
    losses, accuracies = [], []
    for walk in walks:
        log_p = torch.log(walk.clamp_min(_EPS)).flatten(0, 1)  # (B*N, N)
        losses.append(F.nll_loss(log_p, target.repeat(walk.shape[0])))
        accuracies.append((walk.argmax(dim=-1) == target).float().mean())
    return torch.stack(losses).mean(), torch.stack(accuracies).mean(), accuracies[-1]


class CRW(nn.Module):
    """Contrastive random walk on a frame encoder.

    Inputs (batch): "video" B×C×T×H×W (normalised frames, T ≥ 2)
    Outputs: {"loss", "walk_accuracy" (mean over cycle lengths), "walk_accuracy_longest",
              "transition_entropy" (mean entropy of the forward transition rows, nats)}

    Arguments:
      encoder: frame encoder B×C×H×W → B×D×h×w with `out_channels` (e.g. `resnet18_dense`)
      embed_dim: output size of the linear projection head; None uses the encoder's features as
        they are (the head is dropped at evaluation: only `encoder` is saved for propagation)
      temperature: τ of the transition softmax (0.07 as the paper)
      edge_dropout: probability of removing each edge before the softmax (0.1 as the paper)
      patch_size: None makes every cell of the encoder's dense map a node; an int cuts each frame
        into patch_size² patches (stride `patch_stride`), encodes each patch on its own and pools
        it to one node, as the paper does — a patch cannot see where it sits in the frame, so the
        walk cannot come home by remembering positions. Dense nodes need an encoder whose border
        does not give positions away either: task=crw uses `resnet18_dense_reflect` (with zero
        padding, the walk was solved by position and propagation stayed at random init's level)
      patch_stride: step between patches (defaults to patch_size // 2, overlapping by half)
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        embed_dim: int | None = 128,
        temperature: float = 0.07,
        edge_dropout: float = 0.1,
        patch_size: int | None = None,
        patch_stride: int | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"CRW temperature must be > 0, got {temperature}")
        if not 0 <= edge_dropout < 1:
            raise ValueError(f"CRW edge_dropout must be in [0, 1), got {edge_dropout}")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"CRW patch_size must be a positive int or None, got {patch_size}")
        self.encoder = encoder
        self.head = nn.Identity() if embed_dim is None else nn.Linear(encoder.out_channels, embed_dim)
        self.temperature = temperature
        self.edge_dropout = edge_dropout
        self.patch_size = patch_size
        self.patch_stride = patch_stride or (max(1, patch_size // 2) if patch_size else None)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """Node embeddings of every frame.

        Inputs:  video B×C×T×H×W
        Outputs: nodes B×D×T×N, L2-normalised along D (N patches or h·w dense cells per frame)
        """
        b, t = video.shape[0], video.shape[2]
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        if self.patch_size is None:
            features = self.encoder(frames)  # (B*T, D, h, w)
            nodes = rearrange(features, "(b t) d h w -> b t (h w) d", b=b, t=t)
        else:
            p, s = self.patch_size, self.patch_stride
            if frames.shape[-2] < p or frames.shape[-1] < p:
                raise ValueError(f"CRW patch_size {p} is larger than the frames {tuple(frames.shape[-2:])}")
            patches = frames.unfold(2, p, s).unfold(3, p, s)  # (B*T, C, nh, nw, p, p)
            patches = rearrange(patches, "bt c nh nw p q -> (bt nh nw) c p q")
            pooled = self.encoder(patches).mean(dim=(-2, -1))  # (B*T*N, D)
            nodes = rearrange(pooled, "(b t n) d -> b t n d", b=b, t=t)
        nodes = F.normalize(self.head(nodes), dim=-1)
        return rearrange(nodes, "b t n d -> b d t n")

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        video = batch["video"]
        if video.ndim != 5 or video.shape[2] < 2:
            raise ValueError(f"CRW needs batch['video'] B×C×T×H×W with T ≥ 2, got {tuple(video.shape)}")
        nodes = self.embed(video)
        logits = affinity_logits(nodes, self.temperature)
        forward, backward = transition_matrices(logits, self.edge_dropout if self.training else 0.0)
        loss, accuracy, accuracy_longest = cycle_loss(palindrome_walks(forward, backward))
        entropy = -(forward * torch.log(forward.clamp_min(_EPS))).sum(-1).mean()
        return {
            "loss": loss,
            "walk_accuracy": accuracy,
            "walk_accuracy_longest": accuracy_longest,
            "transition_entropy": entropy.detach(),
        }
