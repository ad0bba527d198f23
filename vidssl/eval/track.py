"""Track objects through your own video: a first-frame mask carried through any video file.

    python tools/propagate.py video=clip.mp4 mask=first.png out=DIR [features=pixels|random|checkpoint]

The mask is a PNG the size of the video's frames: a palette PNG (DAVIS style, several objects by
palette index), a greyscale PNG of object indices, or a binary 0/255 (or black/white) mask for one
object. The video is decoded with the project's decoder (`vidssl.datasets.decode.VideoReader`, any
format FFmpeg reads, or a folder of frames) a chunk at a time, so memory does not grow with its
length. Written to ``out``:

    masks/00000.png …   one DAVIS palette PNG per frame (object indices)
    overlay.mp4         every frame with the masks blended over it, outlined, and a legend (H.264)
    overlay.gif         the same, at most ``gif_width`` pixels wide and ``gif_frames`` frames
                        (both unless ``overlay=False``)
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from vidssl.datasets.decode import VideoDecodeError, VideoReader
from vidssl.datasets.formats import palette_indices, rgb_codes, write_mask
from vidssl.eval.overlay import OverlayVideo
from vidssl.eval.propagate import FeatureFn, check_first_mask, propagate_labels

DECODE_CHUNK = 32  # frames decoded per call: one keyframe seek per chunk, a bounded buffer


class _VideoEnded(Exception):
    """Frame ``t`` cannot be decoded: the file ends (or breaks) before its header's frame count."""

    def __init__(self, t: int, reason: str) -> None:
        super().__init__(reason)
        self.t = t


def _decodable(reader: VideoReader, indices: list[int]) -> tuple[torch.Tensor, str]:
    """The frames of ``indices`` up to the first that fails to decode, one at a time (a truncated file),
    and why decoding stopped."""
    frames, reason = [], ""
    for i in indices:
        try:
            frames.append(reader.get_frames([i]))
        except VideoDecodeError as err:
            reason = str(err)
            break
    return (torch.cat(frames) if frames else torch.empty(0, dtype=torch.uint8)), reason


ANTIALIASED_LEVELS = 16  # a greyscale mask with more distinct values is a soft (anti-aliased, JPEG) mask


def read_first_mask(path: str | Path, *, threshold: int | None = None) -> np.ndarray:
    """A first-frame mask as object indices (H×W uint8: 0 background, 1..N objects).

    Palette PNGs and greyscale PNGs give their stored indices, except that a greyscale or
    black-and-white mask of only 0 and 255 is one object (255 → 1). RGB PNGs are mapped through
    the DAVIS palette; pure black and white are again background and one object.
    ``threshold=T``: one object wherever the mask's brightness is above T (an anti-aliased or JPEG
    mask); a greyscale mask with more than ``ANTIALIASED_LEVELS`` values is refused without it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    with Image.open(path) as image:
        if threshold is not None:
            return (np.array(image.convert("L")) > threshold).astype(np.uint8)
        mode = image.mode
        if mode == "1":
            return np.array(image, dtype=np.uint8)
        if mode in ("P", "L", "I", "I;16"):
            values = np.array(image)
            if mode != "P" and set(np.unique(values).tolist()) <= {0, 255}:
                return (values == 255).astype(np.uint8)
            if mode != "P" and len(np.unique(values)) > ANTIALIASED_LEVELS:
                raise ValueError(f"{path}: {len(np.unique(values))} grey levels, a soft (anti-aliased or JPEG) mask "
                                 "rather than object indices; pass threshold=128 to binarise it")
            return values.astype(np.uint8) if values.max() <= 255 else _too_many(path, values)
        codes = rgb_codes(np.array(image.convert("RGB")))
    if set(np.unique(codes).tolist()) <= {0, 0xFFFFFF}:
        return (codes == 0xFFFFFF).astype(np.uint8)
    return palette_indices(codes, path, " (and is not black/white; save it as a palette or greyscale PNG of "
                                        "object indices)")


def check_inputs(video: str | Path, mask: str | Path, *, short_side: int | None = None,
                 threshold: int | None = None) -> None:
    """The checks `track_video` makes on its inputs, before any feature is built: the video opens, the mask
    reads, marks an object and (without ``short_side``) is the frames' size. Raises naming the file."""
    reader = VideoReader(video)
    try:
        height, width = reader.size
    finally:
        reader.close()
    first = read_first_mask(mask, threshold=threshold)
    if short_side is None and first.shape != (height, width):
        raise ValueError(f"mask {mask} is {first.shape[0]}×{first.shape[1]} but the frames of {video} are "
                         f"{height}×{width}; draw it on the first frame at full size (or pass short_side=N to "
                         "resize both)")
    if not first.any():
        raise ValueError(f"mask {mask} marks no object (all 0)")


def _too_many(path: Path, values: np.ndarray) -> np.ndarray:
    raise ValueError(f"{path}: mask values up to {int(values.max())}; expected object indices 0..255")


def _resize_frames(frames: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 T×H×W×3 → T×h×w×3 (bilinear, antialiased); ``size`` None keeps them."""
    if size is None or tuple(frames.shape[1:3]) == size:
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _working_size(height: int, width: int, short_side: int | None) -> tuple[int, int] | None:
    if short_side is None:
        return None
    scale = short_side / min(height, width)
    return round(height * scale), round(width * scale)


def track_video(
    video: str | Path,
    mask: str | Path | np.ndarray,
    out: str | Path,
    feature_fn: FeatureFn,
    *,
    short_side: int | None = None,
    max_frames: int | None = None,
    start_frame: int = 0,
    threshold: int | None = None,
    fps: float | None = None,
    gif_width: int = 320,
    gif_frames: int = 120,
    overlay: bool = True,
    progress: bool = True,
    **protocol: Any,
) -> dict[str, Any]:
    """Propagate a first-frame mask through a video; write per-frame masks and overlay MP4/GIF.

    Arguments:
      video: a video file (or a folder of frames) the project's decoder reads.
      mask: the first frame's mask (a path, read by `read_first_mask`, or an H×W index array).
      out: the output folder (created).
      feature_fn: uint8 frame H×W×3 → D×h×w features (see `vidssl.eval.features`).
      short_side: resize frames (and the mask, nearest) so that their short side has this many
        pixels before tracking; None keeps the video's size (the mask must then match it).
      max_frames: track only the first this many frames (None: all).
      start_frame: the video frame the mask is drawn on; tracking starts there (masks/00000.png is it).
      threshold: binarise a soft mask file at this brightness (`read_first_mask`).
      A video that ends before its header says (a truncated file) is tracked up to its last decodable frame:
      every mask is written as it is computed, the overlays hold the frames tracked, and ``truncated`` in
      the result says where it stopped.
      fps: frame rate of the overlay MP4/GIF (None: the video's).
      overlay: write overlay.mp4 and overlay.gif (`vidssl.eval.overlay.OverlayVideo`); False: the masks only.
      protocol: `propagate_labels`'s keyword arguments.
    Returns: {"masks": folder, "mp4": path, "gif": path (both None without ``overlay``), "frames": frames tracked,
    "objects": N, "truncated": None, or why the video ended early}.
    """
    out = Path(out)
    reader = VideoReader(video)
    try:
        if not 0 <= start_frame < reader.num_frames:
            raise ValueError(f"start_frame={start_frame}: {video} has frames 0..{reader.num_frames - 1}")
        left = reader.num_frames - start_frame
        num_frames = left if max_frames is None else min(max_frames, left)
        if num_frames < 1:
            raise ValueError(f"{video}: no frames to track")
        height, width = reader.size
        size = _working_size(height, width, short_side)
        first = read_first_mask(mask, threshold=threshold) if not isinstance(mask, np.ndarray) else mask
        first = check_first_mask(first, name=str(video)).numpy().astype(np.uint8)
        if size is None and first.shape != (height, width):
            raise ValueError(f"mask {mask if not isinstance(mask, np.ndarray) else ''} is "
                             f"{first.shape[0]}×{first.shape[1]} but the frames of {video} are {height}×{width}; "
                             f"draw it on the first frame at full size (or pass short_side=N to resize both)")
        if size is not None:
            first = np.array(Image.fromarray(first).resize(size[::-1], Image.NEAREST))
        num_objects = int(first.max())
        if num_objects == 0:
            raise ValueError(f"mask {mask if not isinstance(mask, np.ndarray) else ''} marks no object (all 0)")

        chunk: dict[str, Any] = {"start": -DECODE_CHUNK, "frames": None}  # no frame decoded yet

        def frame(t: int) -> torch.Tensor:
            if not chunk["start"] <= t < chunk["start"] + DECODE_CHUNK:
                indices = list(range(start_frame + t, start_frame + min(t + DECODE_CHUNK, num_frames)))
                try:
                    frames, chunk["reason"] = reader.get_frames(indices), ""
                except VideoDecodeError:  # a truncated file: keep the frames before the break
                    frames, chunk["reason"] = _decodable(reader, indices)
                chunk["start"], chunk["frames"] = t, _resize_frames(frames, size) if len(frames) else frames
            if t - chunk["start"] >= len(chunk["frames"]):
                raise _VideoEnded(t, chunk["reason"])
            return chunk["frames"][t - chunk["start"]]

        masks_dir = out / "masks"
        try:
            frame(0)  # a video whose first frame cannot be decoded stops here, before any output
        except _VideoEnded as end:
            raise ValueError(f"{video}: its first frame cannot be decoded ({end})") from None
        tracked, truncated = 0, None
        video_out = (OverlayVideo(out, num_objects=num_objects, num_frames=num_frames,
                                  fps=float(fps or reader.fps or 25.0), gif_width=gif_width, gif_frames=gif_frames)
                     if overlay else None)
        with torch.inference_mode(), video_out or nullcontext():
            maps = propagate_labels(lambda t: feature_fn(frame(t)), first, num_frames, name=str(video), **protocol)
            try:
                for t, label_map in enumerate(tqdm(maps, total=num_frames, desc=f"track {Path(video).name}",
                                                   unit="frame", disable=not progress)):
                    labels = label_map.numpy()
                    write_mask(masks_dir / f"{t:05d}.png", labels)
                    if video_out is not None:
                        video_out.add(frame(t).numpy(), labels)
                    tracked = t + 1
            except _VideoEnded as end:
                truncated = (f"{video} ends at frame {start_frame + end.t} of the {reader.num_frames} its header "
                             f"gives (truncated or "
                             f"corrupt); kept the {tracked} frames tracked")
    finally:
        reader.close()
    return {"masks": masks_dir, "mp4": video_out and video_out.mp4, "gif": video_out and video_out.gif,
            "frames": tracked, "objects": num_objects, "truncated": truncated}
