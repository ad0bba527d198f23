"""Contrastive random walk (CRW): correspondence from the cycle-consistency of time.

Jabri, Owens & Efros, "Space-Time Correspondence as a Contrastive Random Walk", NeurIPS 2020 — the
cycle-consistency-of-time idea of Wang, Jabri & Efros (CVPR 2019) made differentiable. The defaults
compute what the authors' code (github.com/ajabri/videowalk, `code/model.py`) computes; the
equivalence is asserted offline against recorded official outputs (tests/tasks/test_crw_official.py).

Each frame is a set of nodes (patches, or the cells of a stride-8 dense feature map). A walker steps
from frame t to t+1 with the softmax of the affinities between their L2-normalised node embeddings
(temperature τ), walks forward to t+k and back along the palindrome t→…→t+k→…→t, and is asked to
come home: the return matrix is trained with cross-entropy against the identity. Cycle lengths
k = 2..T-1 contribute (the 1-step cycle is an option), and edge dropout removes random transitions so
that the walk cannot rely on a single path; the backward walk loses the edges the forward walk lost
plus its own.

The pure functions below (`affinity_logits`, `edge_dropout_masks`, `transition_matrices`,
`palindrome_walks`, `cycle_loss`, and `random_crop_boxes`, `jitter_patches` for the patches' own
augmentation) are the method; `CRW` only embeds frames into nodes and calls them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchvision.ops import roi_align

from vidssl.monitors import embedding_monitors

# Added to the return probabilities before the log, as the reference code does (log(0) guard).
_EPS = 1e-20


def affinity_logits(nodes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scaled affinities between the nodes of each pair of neighbouring frames.

    Inputs:  nodes B×D×T×N (L2-normalised along D)
    Outputs: B×(T-1)×N×N, entry [b, t, n, m] = <node n of frame t, node m of frame t+1> / temperature
    """
    return torch.einsum("bctn,bctm->btnm", nodes[:, :, :-1], nodes[:, :, 1:]) / temperature


def edge_dropout_masks(
    logits: torch.Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent Bernoulli(rate) edge drops for the forward and the backward transitions.

    Inputs:  logits B×(T-1)×N×N (only its shape and device are used); rate in [0, 1)
    Outputs: (drop_forward, drop_backward), bool B×(T-1)×N×N, True where the edge is removed;
             drop_backward is indexed like the backward transitions ([b, t, m, n]: m in frame t+1)
    """
    draws = torch.rand((2, *logits.shape), generator=generator, device=logits.device)
    return draws[0] < rate, draws[1] < rate


def _drop(logits: torch.Tensor, dropped: torch.Tensor | None) -> torch.Tensor:
    # A dropped edge gets the most negative finite logit rather than -inf: a row whose every edge
    # is dropped then becomes uniform instead of NaN (as the reference code's -1e20).
    if dropped is None:
        return logits
    return logits.masked_fill(dropped, torch.finfo(logits.dtype).min)


def transition_matrices(
    logits: torch.Tensor,
    drop_forward: torch.Tensor | None = None,
    drop_backward: torch.Tensor | None = None,
    *,
    backward_keeps_forward_drops: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-stochastic transition matrices forward (t→t+1) and backward (t+1→t).

    Inputs:  logits B×(T-1)×N×N from `affinity_logits`;
             drop_forward, drop_backward: None or bool B×(T-1)×N×N from `edge_dropout_masks`
             (True removes the edge before the softmax; drop_backward indexed like the backward
             matrices);
             backward_keeps_forward_drops: the backward walk also loses, transposed, every edge the
             forward walk lost (the reference code drops edges in place in the shared affinity, so
             its backward drop rate is 1-(1-p)²); False makes the two directions independent
    Outputs: (forward, backward), each B×(T-1)×N×N with rows summing to 1;
             forward[b, t, n, m] = P(node n of frame t → node m of frame t+1),
             backward[b, t, m, n] = P(node m of frame t+1 → node n of frame t)
    """
    forward_logits = _drop(logits, drop_forward)
    shared = forward_logits if backward_keeps_forward_drops else logits
    backward_logits = _drop(shared.transpose(-1, -2), drop_backward)
    return forward_logits.softmax(dim=-1), backward_logits.softmax(dim=-1)


def palindrome_walks(
    forward: torch.Tensor, backward: torch.Tensor, shortest: int = 2
) -> list[torch.Tensor]:
    """Return-probability matrices of the palindrome walks 0→k→0, k = shortest..T-1.

    Inputs:  forward, backward B×(T-1)×N×N from `transition_matrices`; shortest ≥ 1, the shortest
             cycle length (2 as the reference code: 0→1→0 is left out)
    Outputs: list of T-shortest tensors B×N×N; the one for cycle length k is
             forward[0] @ … @ forward[k-1] @ backward[k-1] @ … @ backward[0],
             whose entry [b, n, m] is the probability that a walk from node n of frame 0 ends at node
             m of frame 0 (the target is m = n)
    """
    walks = []
    # Both products grow by one step per cycle length: out = P(0→k), back = P(k→0).
    out, back = forward[:, 0], backward[:, 0]
    for k in range(1, forward.shape[1] + 1):
        if k > 1:
            out = out @ forward[:, k - 1]
            back = backward[:, k - 1] @ back
        if k >= shortest:
            walks.append(out @ back)
    return walks


def cycle_loss(walks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy of each walk's return against the identity, averaged over cycle lengths.

    The logits are log(P + 1e-20) of the return probabilities P, as the reference code's; since the
    rows of P sum to 1 the cross-entropy's softmax changes them only by rounding.

    Inputs:  walks, non-empty list of B×N×N return-probability matrices (rows sum to 1)
    Outputs: (loss scalar, accuracy scalar, accuracy of the longest cycle scalar) where accuracy is
             the fraction of start nodes whose most probable end node is themselves
    """
    if not walks:
        raise ValueError("cycle_loss needs at least one walk (clips shorter than the shortest cycle + 1?)")
    n = walks[0].shape[-1]
    target = torch.arange(n, device=walks[0].device)
    losses, accuracies = [], []
    for walk in walks:
        logits = torch.log(walk + _EPS).flatten(0, 1)  # (B*N, N)
        targets = target.repeat(walk.shape[0])
        losses.append(F.cross_entropy(logits, targets))
        accuracies.append((logits.argmax(dim=-1) == targets).float().mean())
    return torch.stack(losses).mean(), torch.stack(accuracies).mean(), accuracies[-1]


def random_crop_boxes(
    count: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.7, 0.9),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random resized crop boxes, drawn as torchvision's `RandomResizedCrop.get_params` draws them.

    Area fraction uniform in `scale`, log-aspect uniform in `ratio`, sides rounded to whole pixels; the
    first of 10 tries that fits, else the whole image.

    Inputs:  count boxes in a height×width image; scale, ratio as `RandomResizedCrop`'s
    Outputs: count×4 float boxes (left, top, right, bottom) in pixels, right/bottom exclusive
    """
    tries = 10
    opts = {"generator": generator, "device": device}
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(count, tries, **opts))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(count, tries, **opts))
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first maximum: the first fit
    found = fits.any(dim=1)
    w = torch.where(found, w.gather(1, first)[:, 0], torch.full_like(w[:, 0], width))
    h = torch.where(found, h.gather(1, first)[:, 0], torch.full_like(h[:, 0], height))
    top = torch.floor(torch.rand(count, **opts) * (height - h + 1))
    left = torch.floor(torch.rand(count, **opts) * (width - w + 1))
    return torch.stack([left, top, left + w, top + h], dim=1)


def jitter_patches(
    patches: torch.Tensor,
    scale: tuple[float, float] = (0.7, 0.9),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random resized crop of every patch on its own, resized back to the patch's size.

    The reference code's patch-grid augmentation (`RandomResizedCrop(patch, scale=(0.7, 0.9))` on every
    patch). Boxes from `random_crop_boxes`, resampled bilinearly at the output pixel centres (`roi_align`
    with one sample per pixel: with scale ≤ 1 no side of a crop exceeds the patch's, so this is plain
    bilinear upsampling; at the crop's edge it blends in the neighbouring pixel of the patch where a
    crop-then-resize repeats the edge pixel).

    Inputs:  patches K×C×P×Q (float); scale, 0 < low ≤ high ≤ 1; ratio, 0 < low ≤ high
    Outputs: K×C×P×Q
    """
    k, _, height, width = patches.shape
    boxes = random_crop_boxes(k, height, width, scale, ratio, generator, patches.device).to(patches.dtype)
    index = torch.arange(k, device=patches.device, dtype=patches.dtype)[:, None]
    return roi_align(patches, torch.cat([index, boxes], dim=1), output_size=(height, width), sampling_ratio=1,
                     aligned=True)


class CRW(nn.Module):
    """Contrastive random walk on a frame encoder.

    Inputs (batch): "video" B×C×T×H×W (normalised frames, T ≥ shortest_cycle + 1)
    Outputs: {"loss", "walk_accuracy" (mean over cycle lengths), "walk_accuracy_longest",
              "transition_entropy" (mean entropy of the forward transition rows, nats),
              "cycle_loss_<k>" (the loss of the k-step-out palindrome alone, k = shortest_cycle..T-1),
              "embedding_std", "embedding_rankme" (of the first frame's B·N nodes, `vidssl.monitors`)}

    Arguments (defaults = the reference code's computation; the paper's training command sets
    τ 0.05 and edge dropout 0.1, see vidssl/configs/task/crw.yaml):
      encoder: frame encoder B×C×H×W → B×D×h×w with `out_channels` (e.g. `resnet18_dense`)
      embed_dim: output size of the linear projection head; None uses the encoder's features as
        they are (the head is dropped at evaluation: only `encoder` is saved for propagation)
      temperature: τ of the transition softmax (0.07, the reference code's default)
      edge_dropout: probability of removing each edge before the softmax (0.1, the paper's)
      patch_size: None makes every cell of the encoder's dense map a node; an int cuts each frame
        into patch_size² patches (stride `patch_stride`), encodes each patch on its own and pools
        it to one node, as the paper does — a patch cannot see where it sits in the frame, so the
        walk cannot come home by remembering positions. Dense nodes need an encoder whose border
        does not give positions away either: task=crw uses `resnet18_dense_reflect` (with zero
        padding, the walk was solved by position and propagation stayed at random init's level)
      patch_stride: step between patches (defaults to patch_size // 2, overlapping by half)
      patch_jitter_scale, patch_jitter_ratio: in training, each patch is replaced by its own random
        resized crop with this area fraction and aspect range (`jitter_patches`; (0.7, 0.9) and
        (3/4, 4/3) as the reference code's patch grid); None turns it off
      shortest_cycle: the shortest palindrome that is trained (2 as the reference code; 1 adds the
        0→1→0 cycle)
      independent_edge_dropout: False (the reference code) lets the backward walk keep the forward
        walk's dropped edges on top of its own; True draws the two directions independently
      feature_dropout: dropout on the encoder's feature maps before pooling (the reference code's
        `--featdrop`, 0 by default there too)
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
        patch_jitter_scale: tuple[float, float] | None = (0.7, 0.9),
        patch_jitter_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        shortest_cycle: int = 2,
        independent_edge_dropout: bool = False,
        feature_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"CRW temperature must be > 0, got {temperature}")
        if not 0 <= edge_dropout < 1:
            raise ValueError(f"CRW edge_dropout must be in [0, 1), got {edge_dropout}")
        if not 0 <= feature_dropout < 1:
            raise ValueError(f"CRW feature_dropout must be in [0, 1), got {feature_dropout}")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"CRW patch_size must be a positive int or None, got {patch_size}")
        if shortest_cycle < 1:
            raise ValueError(f"CRW shortest_cycle must be ≥ 1, got {shortest_cycle}")
        if patch_jitter_scale is not None:
            patch_jitter_scale = (float(patch_jitter_scale[0]), float(patch_jitter_scale[1]))
            if not 0 < patch_jitter_scale[0] <= patch_jitter_scale[1] <= 1:
                raise ValueError(f"CRW patch_jitter_scale must satisfy 0 < low ≤ high ≤ 1, got {patch_jitter_scale}")
        patch_jitter_ratio = (float(patch_jitter_ratio[0]), float(patch_jitter_ratio[1]))
        if not 0 < patch_jitter_ratio[0] <= patch_jitter_ratio[1]:
            raise ValueError(f"CRW patch_jitter_ratio must satisfy 0 < low ≤ high, got {patch_jitter_ratio}")
        self.encoder = encoder
        self.head = nn.Identity() if embed_dim is None else nn.Linear(encoder.out_channels, embed_dim)
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.temperature = temperature
        self.edge_dropout = edge_dropout
        self.patch_size = patch_size
        self.patch_stride = patch_stride or (max(1, patch_size // 2) if patch_size else None)
        self.patch_jitter_scale = patch_jitter_scale
        self.patch_jitter_ratio = patch_jitter_ratio
        self.shortest_cycle = shortest_cycle
        self.independent_edge_dropout = independent_edge_dropout

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """Node embeddings of every frame (patches are jittered in training mode only).

        Inputs:  video B×C×T×H×W
        Outputs: nodes B×D×T×N, L2-normalised along D (N patches or h·w dense cells per frame)
        """
        b, t = video.shape[0], video.shape[2]
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        if self.patch_size is None:
            features = self.feature_dropout(self.encoder(frames))  # (B*T, D, h, w)
            nodes = rearrange(features, "(b t) d h w -> b t (h w) d", b=b, t=t)
        else:
            p, s = self.patch_size, self.patch_stride
            if frames.shape[-2] < p or frames.shape[-1] < p:
                raise ValueError(f"CRW patch_size {p} is larger than the frames {tuple(frames.shape[-2:])}")
            patches = frames.unfold(2, p, s).unfold(3, p, s)  # (B*T, C, nh, nw, p, p)
            patches = rearrange(patches, "bt c nh nw p q -> (bt nh nw) c p q")
            if self.training and self.patch_jitter_scale is not None:
                patches = jitter_patches(patches, self.patch_jitter_scale, self.patch_jitter_ratio)
            pooled = self.feature_dropout(self.encoder(patches)).mean(dim=(-2, -1))  # (B*T*N, D)
            nodes = rearrange(pooled, "(b t n) d -> b t n d", b=b, t=t)
        nodes = F.normalize(self.head(nodes), dim=-1)
        return rearrange(nodes, "b t n d -> b d t n")

    def forward(
        self, batch: dict, edge_masks: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """The CRW loss of a batch of clips.

        edge_masks: (drop_forward, drop_backward) as `edge_dropout_masks` returns them, to use instead
        of drawing new ones (in training with edge_dropout > 0 they are drawn from torch's RNG)
        """
        video = batch["video"]
        if video.ndim != 5 or video.shape[2] < self.shortest_cycle + 1:
            raise ValueError(
                f"CRW needs batch['video'] B×C×T×H×W with T ≥ {self.shortest_cycle + 1} "
                f"(shortest_cycle {self.shortest_cycle} + 1), got {tuple(video.shape)}"
            )
        nodes = self.embed(video)
        logits = affinity_logits(nodes, self.temperature)
        if edge_masks is None and self.training and self.edge_dropout > 0:
            edge_masks = edge_dropout_masks(logits, self.edge_dropout)
        drop_forward, drop_backward = edge_masks if edge_masks is not None else (None, None)
        forward, backward = transition_matrices(
            logits, drop_forward, drop_backward, backward_keeps_forward_drops=not self.independent_edge_dropout
        )
        walks = palindrome_walks(forward, backward, self.shortest_cycle)
        loss, accuracy, accuracy_longest = cycle_loss(walks)
        entropy = -(forward * torch.log(forward + _EPS)).sum(-1).mean()
        with torch.no_grad():
            # Each cycle length's own loss (``cycle_loss`` averages them); k counts the steps out.
            per_length = {f"cycle_loss_{k}": cycle_loss([walk])[0]
                          for k, walk in enumerate(walks, start=self.shortest_cycle)}
            monitors = embedding_monitors(rearrange(nodes[:, :, 0], "b d n -> (b n) d"))  # the first frame's nodes
        return {
            "loss": loss,
            "walk_accuracy": accuracy,
            "walk_accuracy_longest": accuracy_longest,
            "transition_entropy": entropy.detach(),
            **per_length,
            **monitors,
        }
