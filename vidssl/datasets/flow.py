"""The flow stream: its storage contract, entries that point at extracted flow folders, flow-aware
augmentation, RGB/flow alignment.

Storage (written by `vidssl.datasets.extract_flow`, `tools/extract_flow.py`)::

    FLOW_ROOT/<entry path without its extension>/flow_00001.jpg   flow from frame 0 to frame 1
                                                 flow_00002.jpg   flow from frame 1 to frame 2, ...
                                                 .flow.json       written last: the video is complete

Each image is 3-channel; its first two channels in OpenCV's BGR order hold the horizontal (x) and vertical
(y) displacement in pixels, clipped to ±bound and mapped linearly onto 0..255 (`encode_flow`); the third is
the constant 128. Read back as RGB by the "frames" backend, a flow frame's channels are (128, y, x). They reach the encoder as the official MemDPC
pipeline feeds every image sequence: three channels, scaled to [0, 1] and normalised with the ImageNet
statistics, with the same crops as RGB. What differs from RGB:

- no colour jitter or grey conversion (the levels are displacements, not colours);
- a horizontal flip mirrors the motion too: the x channel becomes 255 - x, i.e. -x (`negate_x`, on by
  default; the released MemDPC code has no flow loader, and its image flip alone would leave x unchanged).

A video of N frames has N-1 flow images; flow image i is the motion from frame i to frame i+1. An RGB
dataset wrapped with `FlowAligned` samples over the same N-1 frames, so that with the same seed and
entries the RGB and flow datasets draw the same frame indices for every sample (two streams, one clip).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from vidssl.datasets.decode import VideoDecodeError
from vidssl.datasets.entry import VIDEO_EXTENSIONS, VideoEntry
from vidssl.datasets.transforms import ClipTransform, EvalTransform, _finish

X_CHANNEL = 2  # flow frames read as RGB are (128, y, x)
DEFAULT_BOUND = 20.0  # pixels; the DPC/MemDPC preparation's clip
DONE_MARKER = ".flow.json"  # written last in a video's folder: its presence marks a complete extraction
FLOW_FORMAT_VERSION = 1


def encode_flow(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Displacements → 8-bit levels: clip to ±bound, map [-bound, bound] linearly onto [0, 255], round.

    Inputs: flow float H×W×2 (x, y) in pixels. Outputs: uint8 H×W×2.
    """
    clipped = np.clip(flow, -bound, bound)
    return np.round((clipped + bound) * (255.0 / (2 * bound))).astype(np.uint8)


def decode_flow(levels, bound: float = DEFAULT_BOUND):
    """Inverse of `encode_flow` (up to the rounding): 8-bit levels (a float numpy array or tensor) → pixels."""
    return levels * (2 * bound / 255.0) - bound


def flow_image(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """The image written for one flow field: uint8 H×W×3 in OpenCV's BGR order = (x, y, 128)."""
    image = np.full((*flow.shape[:2], 3), 128, dtype=np.uint8)
    image[..., :2] = encode_flow(flow, bound)
    return image


def read_flow_image(path: str | os.PathLike, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Read one written flow image back as displacements in pixels: float32 H×W×2 (x, y)."""
    # Pillow, not cv2.imread: once decord is imported, its bundled zlib breaks OpenCV's PNG decoder
    # ("libpng error: bad parameters to zlib"), while OpenCV's PNG and JPEG writers still work.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise VideoDecodeError(path, f"cannot read flow image: {err}") from err
    return decode_flow(rgb[..., 2::-1][..., :2].astype(np.float32), bound)  # BGR as written: (x, y)


def flow_dir_for(path: str) -> str:
    """The flow folder of a dataset entry, relative to the flow root: the entry path without a video extension."""
    p = Path(path)
    return (p.with_suffix("") if p.suffix.lower() in VIDEO_EXTENSIONS else p).as_posix()


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The completion record of a flow folder, or None when the folder is absent or unfinished."""
    marker = Path(folder) / DONE_MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None



def flow_entries(entries: Sequence[VideoEntry], flow_root: str | os.PathLike | None) -> list[VideoEntry]:
    """The same entries, each pointing at its extracted flow folder (an absolute path) under `flow_root`.

    Raises FileNotFoundError listing the videos whose flow is missing or unfinished (no marker).
    """
    if flow_root in (None, ""):
        raise ValueError("dataset.modality=flow needs dataset.flow_root=DIR, the folder tools/extract_flow.py wrote")
    root = Path(flow_root).resolve()
    mapped = [VideoEntry(str(root / flow_dir_for(e.path)), e.label, e.split, e.start, e.end, modality="flow")
              for e in entries]
    missing = [e.path for e in mapped if not (Path(e.path) / DONE_MARKER).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(mapped)} videos have no finished flow under {root}, e.g. {missing[:5]}: "
            f"run tools/extract_flow.py with out={root} on this dataset"
        )
    return mapped


def negate_x(frames_tchw: torch.Tensor) -> torch.Tensor:
    """Mirror the horizontal motion of uint8 flow frames T×3×H×W: x level v becomes 255 - v (−x)."""
    out = frames_tchw.clone()
    out[:, X_CHANNEL] = 255 - out[:, X_CHANNEL]
    return out


@dataclass(frozen=True)
class FlowTransform(ClipTransform):
    """Training augmentation of flow clips: ClipTransform's random resized crop and flip, no colour changes.

    Inputs:  flow frames uint8 T×H×W×3 as read back (channels 128, y, x), generator
    Outputs: float C×T×H×W, normalised as RGB when ``normalize`` (N×C×L×H×W with ``blocks=N``, as ClipTransform).
    A flip negates x when ``negate_x``. The colour fields of ClipTransform must stay 0.
    """

    color_jitter: float = 0.0
    hue: float = 0.0
    negate_x: bool = True

    def __post_init__(self) -> None:
        if self.color_jitter or self.hue or self.grayscale:
            raise ValueError("FlowTransform: colour jitter, hue and grayscale do not apply to flow; leave them 0")

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clip, flipped = self._geometry(frames, generator)
        if flipped and self.negate_x:
            clip = negate_x(clip)
        return _finish(F.to_dtype(clip, torch.float32, scale=True), self.normalize, self.blocks)


def for_flow(transform: Callable) -> Callable:
    """The flow counterpart of an RGB transform: ClipTransform → FlowTransform with the same geometry.

    EvalTransform (resize and centre crop) and FlowTransform already suit flow and are returned as they are.
    """
    if isinstance(transform, (FlowTransform, EvalTransform)):
        return transform
    if isinstance(transform, ClipTransform):
        keep = {f.name: getattr(transform, f.name) for f in fields(ClipTransform)
                if f.name not in ("color_jitter", "hue", "jitter_p", "grayscale")}
        return FlowTransform(**keep)
    raise TypeError(f"no flow version of the transform {type(transform).__name__}: pass a FlowTransform")


@dataclass(frozen=True)
class FlowAligned:
    """Wrap an RGB dataset's sampler so that it draws the indices the flow dataset draws.

    The flow of an N-frame video has N-1 images; this sampler samples the RGB video as if it had N-1 frames,
    so RGB frame i and flow image i (motion from frame i to i+1) come from the same clip position.
    """

    sampler: Any

    @property
    def span(self) -> int:
        return getattr(self.sampler, "span", 1) + 1

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        return self.sampler(num_frames - 1, generator)
