"""A look at what the data pipeline feeds a model: the clip a sample's video is laid out as.

The sheets themselves (`tools/preview.py` and ``make demo``) are drawn by `vidssl.app.preview_sheets`."""

from __future__ import annotations

import torch


def as_clip(video: torch.Tensor) -> torch.Tensor:
    """A sample's video as one ``C×T×H×W`` clip: blocks ``N×C×L×H×W`` (``ClipTransform(blocks=N)``) are
    laid end to end again, so a predictive-coding dataset previews like any other."""
    return video.transpose(0, 1).flatten(1, 2) if video.ndim == 5 else video
