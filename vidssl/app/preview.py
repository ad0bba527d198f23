"""A look at what the data pipeline feeds a model: contact sheets of augmented views and log-mel images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidssl import viz
from vidssl.datasets.dataset import VideoDataset


def as_clip(video: torch.Tensor) -> torch.Tensor:
    """A sample's video as one ``C×T×H×W`` clip: blocks ``N×C×L×H×W`` (``ClipTransform(blocks=N)``) are
    laid end to end again, so a predictive-coding dataset previews like any other."""
    return video.transpose(0, 1).flatten(1, 2) if video.ndim == 5 else video


def preview_dataset(dataset: VideoDataset, out_dir: str | Path, name: str, num_clips: int = 4) -> list[Path]:
    """Write ``<name>_views.png`` (one row per view of each clip, frames across time) and, when the
    dataset loads audio, ``<name>_logmel.png`` (the log-mel of each clip's aligned audio, one row each).
    """
    out = Path(out_dir)
    samples = [dataset[i] for i in range(min(num_clips, len(dataset)))]
    clips = []
    for s in samples:
        clips.append(as_clip(s["video"]))
        if "video2" in s:
            clips.append(as_clip(s["video2"]))
    written = [viz.save_png(out / f"{name}_views.png", viz.contact_sheet(clips))]
    if all("audio" in s for s in samples):
        images = [viz.spectrogram_image(s["audio"]) for s in samples]
        width = max(im.shape[1] for im in images)
        images = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
        written.append(viz.save_png(out / f"{name}_logmel.png", viz.montage(images, ncols=1)))
    return written
