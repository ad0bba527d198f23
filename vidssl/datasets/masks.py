"""V-JEPA's multi-block 3D masks (facebookresearch/vjepa2, `src/masks/multiseq_multiblock3d.py`).

On a token grid of D×H×W (time × rows × columns) a mask config hides the union of ``num_blocks`` boxes of
one shared size: the size is drawn once per batch (spatial scale, aspect ratio and temporal scale), the
boxes' positions once per clip. The hidden tokens are what the predictor predicts; the visible rest is
what the context encoder sees. Every clip of the batch keeps as many indices as the clip with the
fewest (the first ones, in ascending order), so the batch stacks into B×K and B×M index tensors.

The random draws follow the official order exactly: the size from a generator seeded with the batch
counter (the official collator's ``_itr_counter``), the positions (top, left, start per box) from
``generator``, where the official code uses the loader worker's global RNG. Given the same counter and
a generator in the same state as that global RNG, the indices are identical (tests/tasks/test_vjepa.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MaskConfig", "MultiBlockMasks", "OFFICIAL_MASKS"]


@dataclass(frozen=True)
class MaskConfig:
    """One mask config: ``num_blocks`` boxes, each covering ``spatial_scale`` of the frame (a range drawn
    uniformly), with height/width ratio in ``aspect_ratio`` and ``temporal_scale`` of the clip's duration.
    ``max_temporal_keep`` < 1 hides every token after that fraction of the duration; ``max_keep`` caps the
    context's tokens."""

    num_blocks: int = 8
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    max_temporal_keep: float = 1.0
    max_keep: int | None = None

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"MaskConfig.num_blocks must be >= 1, got {self.num_blocks}")
        for name in ("spatial_scale", "aspect_ratio", "temporal_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"MaskConfig.{name} must be a range 0 < low <= high, got {(low, high)}")


# The two configs of every V-JEPA / V-JEPA 2 pretraining (configs/train/vitl16/pretrain-256px-16f.yaml, vjepa2
# c2963a47433ecca0ad4f06ec28bcfa8cb5b5cefb): 8 small blocks and 2 large ones, full temporal extent.
OFFICIAL_MASKS = (MaskConfig(num_blocks=8, spatial_scale=(0.15, 0.15)),
                  MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7)))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + torch.rand(1, generator=generator).item() * (high - low)


class MultiBlockMasks:
    """Draws one mask config's (context, target) token indices for a batch.

    Args:
        config: the mask config.
        grid: tokens per clip as (D, H, W): frames/tubelet, height/patch, width/patch.

    Call: ``masks(batch_size, counter=, generator=) -> (context B×K, target B×M)`` int64 indices into the
    time-major D·H·W tokens, each row ascending.
    """

    def __init__(self, config: MaskConfig, grid: Sequence[int]) -> None:
        self.config = config
        self.duration, self.height, self.width = (int(g) for g in grid)
        self.max_context_duration = max(1, int(self.duration * config.max_temporal_keep))

    def block_size(self, counter: int) -> tuple[int, int, int]:
        """The batch's box (t, h, w), drawn from a generator seeded with ``counter``."""
        g = torch.Generator().manual_seed(counter)
        c = self.config
        t = max(1, int(self.duration * _uniform(g, *c.temporal_scale)))
        keep = int(self.height * self.width * _uniform(g, *c.spatial_scale))
        ratio = _uniform(g, *c.aspect_ratio)
        h = min(int(round(math.sqrt(keep * ratio))), self.height)
        w = min(int(round(math.sqrt(keep / ratio))), self.width)
        return t, h, w

    def _visible(self, size: tuple[int, int, int], generator: torch.Generator) -> Tensor:
        """One clip's visibility (1 = context) after hiding ``num_blocks`` boxes."""
        t, h, w = size
        visible = torch.ones(self.duration, self.height, self.width, dtype=torch.int32)
        for _ in range(self.config.num_blocks):
            top = int(torch.randint(0, self.height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, self.width - w + 1, (1,), generator=generator))
            start = int(torch.randint(0, self.duration - t + 1, (1,), generator=generator))
            visible[start:start + t, top:top + h, left:left + w] = 0
        visible[self.max_context_duration:] = 0
        return visible.flatten()

    def __call__(self, batch_size: int, *, counter: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        size = self.block_size(counter)
        context, target = [], []
        for _ in range(batch_size):
            while True:  # a clip whose every token is hidden is drawn again
                visible = self._visible(size, generator)
                if visible.any():
                    break
            context.append(torch.nonzero(visible).flatten())
            target.append(torch.nonzero(visible == 0).flatten())
        keep_context = min(len(c) for c in context)
        if self.config.max_keep is not None:
            keep_context = min(keep_context, self.config.max_keep)
        keep_target = min(len(t) for t in target)
        return (torch.stack([c[:keep_context] for c in context]),
                torch.stack([t[:keep_target] for t in target]))
