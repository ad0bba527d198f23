"""Clip layouts: which frame indices one sample reads from a video.

A sampler is a small strategy object (as pytorchvideo's ``ClipSampler``):
``sampler(num_frames, generator) -> list[int]`` returns the indices to decode, in temporal order, and
``sampler.span`` says how many consecutive frames a sample covers. Randomness comes only from the
``torch.Generator`` passed in, so a sample is reproducible from its seed wherever it is loaded.

Layouts:
- ``ClipSampler``: T frames at a fixed stride (SimCLR/MoCo/SeLaVi clips);
- ``BlockSampler``: num_seq blocks of seq_len frames, one stride throughout (CPC, DPC, MemDPC: the
  DPC paper uses 8 blocks x 5 frames at stride 3);
- ``SequenceSampler``: T frames whose stride is drawn per sample from a range (correspondence: pairs
  with T=2, or the longer sequences a random walk runs on).

A video shorter than the span raises ``ClipTooShortError``; the dataset counts it and skips the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class ClipTooShortError(ValueError):
    """The video has fewer frames than one sample needs."""


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _start(num_frames: int, span: int, random: bool, generator: torch.Generator) -> int:
    if num_frames < span:
        raise ClipTooShortError(f"a clip needs {span} frames but the video has {num_frames}")
    slack = num_frames - span
    return _randint(0, slack, generator) if random else slack // 2


@dataclass(frozen=True)
class ClipSampler:
    """``num_frames`` frames, ``stride`` apart; a random start (or the centred clip when not random).

    ``temporal_jitter`` moves each frame by up to that many frames (kept in order and inside the
    video), a cheap temporal augmentation.
    """

    num_frames: int
    stride: int = 1
    random: bool = True
    temporal_jitter: int = 0

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1 or self.temporal_jitter < 0:
            raise ValueError(f"invalid ClipSampler({self})")

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1 + 2 * self.temporal_jitter

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        start = _start(num_frames, self.span, self.random, generator) + self.temporal_jitter
        indices = [start + i * self.stride for i in range(self.num_frames)]
        if self.random and self.temporal_jitter:
            offsets = torch.randint(
                -self.temporal_jitter, self.temporal_jitter + 1, (self.num_frames,), generator=generator
            )
            indices = sorted(i + int(o) for i, o in zip(indices, offsets))
        return indices


@dataclass(frozen=True)
class BlockSampler:
    """``num_seq`` consecutive blocks of ``seq_len`` frames, every frame ``stride`` apart.

    Returns ``num_seq * seq_len`` indices; the task cuts them back into blocks with
    ``rearrange(video, "c (n l) h w -> n c l h w", n=num_seq)``.
    """

    num_seq: int
    seq_len: int
    stride: int = 1
    random: bool = True

    def __post_init__(self) -> None:
        if self.num_seq < 1 or self.seq_len < 1 or self.stride < 1:
            raise ValueError(f"invalid BlockSampler({self})")

    @property
    def num_frames(self) -> int:
        return self.num_seq * self.seq_len

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        start = _start(num_frames, self.span, self.random, generator)
        return [start + i * self.stride for i in range(self.num_frames)]


@dataclass(frozen=True)
class SequenceSampler:
    """``num_frames`` frames with one stride drawn per sample from [min_stride, max_stride].

    The largest stride decides the span, so a video that fits it always fits the draw; a shorter video
    is clipped to the largest stride it allows rather than rejected, as long as min_stride fits.
    """

    num_frames: int
    min_stride: int = 1
    max_stride: int = 1
    random: bool = True

    def __post_init__(self) -> None:
        if self.num_frames < 1 or not 1 <= self.min_stride <= self.max_stride:
            raise ValueError(f"invalid SequenceSampler({self})")

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.min_stride + 1

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        if num_frames < self.span:
            raise ClipTooShortError(f"a sequence needs {self.span} frames but the video has {num_frames}")
        fits = self.max_stride if self.num_frames == 1 else (num_frames - 1) // (self.num_frames - 1)
        high = min(self.max_stride, fits)
        stride = _randint(self.min_stride, high, generator) if self.random else high
        start = _start(num_frames, (self.num_frames - 1) * stride + 1, self.random, generator)
        return [start + i * stride for i in range(self.num_frames)]


def clip_time_span(indices: list[int], fps: float) -> tuple[float, float]:
    """The (start_sec, duration_sec) that frames ``indices`` cover, for aligning audio to a clip.

    A frame i shows the interval [i/fps, (i+1)/fps), so the span ends one frame after the last index.
    """
    if not indices:
        raise ValueError("no frame indices")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    start = min(indices) / fps
    return start, (max(indices) + 1) / fps - start
