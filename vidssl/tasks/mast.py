"""MAST-style colour reconstruction with memory: correspondence learnt by copying colour.

Vondrick et al. 2018 (colourisation), Lai & Xie 2019 (CorrFlow), Lai, Lu & Xie 2020 (MAST: "A
Memory-Augmented Self-supervised Tracker"). A target frame's colour is reconstructed by copying
colour from reference frames through the softmax affinity between their features; the only way to
copy well is to find where each target pixel came from, so the features learn correspondence.

What this file does (the defaults in brackets):
- the reconstruction target is the target frame's Lab image, average-pooled to the feature grid
  (stride 8) and scaled to about [-1, 1]; a regression with the Huber loss, as MAST (not CorrFlow's
  quantised colour classes);
- the memory is the `short_term` [2] frames just before the target, each read only inside a
  (2·radius+1)² window [radius 4 cells] around the query's position, plus a long-term memory of
  `long_term` [1] sparse earlier frames (evenly spaced from the clip's first frame) read globally;
  one softmax runs over the whole memory (temperature τ [0.07] on L2-normalised features, the same
  affinity label propagation uses);
- against the shortcut of matching by colour (the encoder would otherwise see the target's colour
  that it must reconstruct), the encoder's input loses one Lab channel — L, a or b, the same one for
  every frame of a clip, set to its neutral value — with probability `channel_dropout` [1.0], as
  MAST's channel dropout; the encoder still receives normalised RGB (converted back from Lab), so it
  runs unchanged on ordinary frames at evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidssl.color import lab_to_rgb, rgb_to_lab
from vidssl.datasets.transforms import denormalize_video, normalize_video
from vidssl.monitors import embedding_monitors

# Lab channel scales that bring L ∈ [0, 100] to [0, 1] and a, b to about [-1, 1]
LAB_SCALE = (100.0, 127.0, 127.0)
# "dropping" a Lab channel sets it to its neutral value: mid-grey lightness, no colour
_LAB_NEUTRAL = (50.0, 0.0, 0.0)


def window_mask(height: int, width: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """Which key cells lie inside each query cell's square window on an height×width grid.

    Outputs: bool (h·w)×(h·w); [q, k] is True when |y_q - y_k| ≤ radius and |x_q - x_k| ≤ radius
    """
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)


def reconstruct(attention: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Copy colours from the memory through a row-stochastic attention.

    Inputs:  attention B×Q×K (rows sum to 1), colours B×C×K (the memory's colours)
    Outputs: B×C×Q, each query's attention-weighted mean colour
    """
    return torch.einsum("bqk,bck->bcq", attention, colours)


def memory_frames(num_frames: int, short_term: int, long_term: int) -> tuple[list[int], list[int]]:
    """Indices of the long-term and short-term memory frames for the target frame `num_frames - 1`.

    Outputs: (long_term indices, evenly spaced from frame 0 over the frames before the short-term
              ones; short_term indices, the frames just before the target), both ascending
    """
    earlier = num_frames - 1 - short_term  # frames available to the long-term memory
    if short_term < 1 or long_term < 0 or earlier < long_term:
        raise ValueError(
            f"MAST needs clips of at least short_term + long_term + 1 = {short_term + long_term + 1} "
            f"frames (short_term={short_term} ≥ 1, long_term={long_term} ≥ 0), got {num_frames}: "
            "raise the sampler's num_frames"
        )
    if long_term == 0:
        long = []
    else:
        long = torch.linspace(0, earlier - 1, long_term).round().long().tolist()
    return long, list(range(earlier, num_frames - 1))


class MAST(nn.Module):
    """Reconstruct the last frame of a clip from its memory of earlier frames (see the module doc).

    Inputs (batch): "video" B×3×T×H×W (ImageNet-normalised RGB, T ≥ short_term + long_term + 1)
    Outputs: {"loss" (Huber on scaled Lab), "l1" (mean |error| of the reconstruction, scaled Lab),
              "l1_static" (the same for copying the previous frame unchanged: the no-motion baseline
              that correspondence must beat), "embedding_std", "embedding_rankme" (of the target
              frame's B·h·w feature cells, `vidssl.monitors`)}

    Arguments:
      encoder: frame encoder B×3×H×W → B×D×h×w (e.g. `resnet18_dense`)
      temperature: τ of the softmax over the memory, on L2-normalised features
      short_term: how many frames just before the target form the short-term memory (≥ 1)
      long_term: how many sparse earlier frames form the long-term memory (≥ 0)
      radius: half-size, in feature cells, of the window a query reads in short-term frames;
        None reads them globally
      channel_dropout: probability that a clip's encoder input loses one Lab channel
      huber_delta: where the Huber loss turns from quadratic to linear, in scaled Lab units
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        temperature: float = 0.07,
        short_term: int = 2,
        long_term: int = 1,
        radius: int | None = 4,
        channel_dropout: float = 1.0,
        huber_delta: float = 0.1,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MAST temperature must be > 0, got {temperature}")
        if not 0 <= channel_dropout <= 1:
            raise ValueError(f"MAST channel_dropout must be in [0, 1], got {channel_dropout}")
        if radius is not None and radius < 0:
            raise ValueError(f"MAST radius must be ≥ 0 or None, got {radius}")
        memory_frames(short_term + long_term + 1, short_term, long_term)  # validates the counts
        self.encoder = encoder
        self.temperature = temperature
        self.short_term = short_term
        self.long_term = long_term
        self.radius = radius
        self.channel_dropout = channel_dropout
        self.huber_delta = huber_delta

    def drop_channels(self, lab: torch.Tensor) -> torch.Tensor:
        """The encoder's view of a clip: one Lab channel set to neutral with prob. `channel_dropout`.

        Inputs:  lab B×3×T×H×W
        Outputs: lab B×3×T×H×W (a copy; the same channel is dropped in every frame of a clip)
        """
        b = lab.shape[0]
        drop = torch.rand(b, device=lab.device) < self.channel_dropout
        channel = torch.randint(0, 3, (b,), device=lab.device)
        neutral = torch.tensor(_LAB_NEUTRAL, dtype=lab.dtype, device=lab.device)
        hit = F.one_hot(channel, 3).bool() & drop[:, None]  # (B, 3): which channel of which clip
        hit = hit.view(b, 3, 1, 1, 1)
        return torch.where(hit, neutral.view(1, 3, 1, 1, 1), lab)

    def attention(self, query: torch.Tensor, memory: torch.Tensor, num_short: int) -> torch.Tensor:
        """Softmax attention of the target's cells over the memory's cells.

        Inputs:  query B×D×h×w, memory B×D×M×h×w (L2-normalised along D; the last `num_short`
                 memory frames are short-term and read only inside the window)
        Outputs: B×(h·w)×(M·h·w), rows sum to 1
        """
        m, h, w = memory.shape[2:]
        logits = torch.einsum(
            "bdq,bdk->bqk", query.flatten(2), rearrange(memory, "b d m h w -> b d (m h w)")
        ) / self.temperature
        if self.radius is not None:
            inside = window_mask(h, w, self.radius, device=query.device)  # (hw, hw)
            allowed = torch.ones(h * w, m, h * w, dtype=torch.bool, device=query.device)
            allowed[:, m - num_short :] = inside[:, None]
            logits = logits.masked_fill(~allowed.flatten(1), float("-inf"))
        return logits.softmax(dim=-1)

    @classmethod
    def evaluation_exports(cls, config: dict) -> dict:
        """What a trained MAST offers evaluation: the encoder's output (its reconstruction reads the output,
        and so does MAST's own evaluation), never the stride-8 ResNet's layer3 that CRW's evaluation reads."""
        return {"feature_layer": "output"}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        video = batch["video"]
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"MAST needs batch['video'] B×3×T×H×W, got {tuple(video.shape)}")
        long, short = memory_frames(video.shape[2], self.short_term, self.long_term)
        frames = long + short + [video.shape[2] - 1]  # memory first, the target last
        with torch.no_grad():
            lab = rgb_to_lab(denormalize_video(video[:, :, frames]))  # (B, 3, F, H, W)
            seen = lab
            if self.training and self.channel_dropout > 0:
                seen = self.drop_channels(lab)
            encoder_input = normalize_video(lab_to_rgb(seen))

        b = video.shape[0]
        features = self.encoder(rearrange(encoder_input, "b c f h w -> (b f) c h w"))
        features = F.normalize(rearrange(features, "(b f) d h w -> b d f h w", b=b), dim=1)
        h, w = features.shape[-2:]
        attention = self.attention(features[:, :, -1], features[:, :, :-1], num_short=len(short))

        # Colours live on the feature grid: pool Lab to it and scale it to about [-1, 1].
        scale = torch.tensor(LAB_SCALE, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1, 1)
        colours = F.adaptive_avg_pool3d(lab / scale, (lab.shape[2], h, w))  # (B, 3, F, h, w)
        target = colours[:, :, -1].flatten(2)  # (B, 3, h*w)
        memory = rearrange(colours[:, :, :-1], "b c m h w -> b c (m h w)")
        recon = reconstruct(attention, memory)
        loss = F.huber_loss(recon, target, delta=self.huber_delta)
        return {
            "loss": loss,
            "l1": (recon - target).abs().mean().detach(),
            "l1_static": (colours[:, :, -2].flatten(2) - target).abs().mean(),
            **embedding_monitors(rearrange(features[:, :, -1], "b d h w -> (b h w) d")),  # the target's cells
        }
