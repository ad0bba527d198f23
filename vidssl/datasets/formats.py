"""On-disk dataset layouts, each read into a list of `VideoEntry`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VideoEntry:
    """One video (or trimmed clip) of a dataset; `path` is relative to the dataset root."""

    path: str
    label: int = -1  # -1 when unknown; only evaluation reads labels
    split: str = "train"
    start: float | None = None  # seconds; optional trimming of the video
    end: float | None = None
