"""Overlays a person can read: each object's outline in its palette colour, and a legend naming the objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion, find_objects

from vidssl import viz
from vidssl.datasets.formats import DAVIS_PALETTE

LEGEND_SHADE = 0.4  # the brightness kept under the legend


def outlined_overlay(frame: np.ndarray, labels: np.ndarray, num_objects: int, *, alpha: float = 0.5,
                     legend: bool = True) -> np.ndarray:
    """``viz.overlay_masks`` plus a 1-pixel outline of every object in its full palette colour, and (``legend``)
    a swatch with the object's index for each of ``1..num_objects`` in the top-left corner, on the frame darkened
    to ``LEGEND_SHADE`` of its brightness there.

    Inputs: frame uint8 H×W×3, labels integer H×W (0 background). Outputs: uint8 H×W×3.
    """
    out = viz.overlay_masks(frame, labels, alpha=alpha)
    boxes = find_objects(np.asarray(labels, dtype=np.int64), max_label=num_objects)  # erode only where each is
    for index, box in enumerate(boxes, start=1):
        if box is not None:
            mask = labels[box] == index
            edge = mask & ~binary_erosion(mask, border_value=0)  # beyond the box is not the object: 0 is right
            out[box][edge] = DAVIS_PALETTE[index]
    rows = min(num_objects, out.shape[0] // 12) if legend else 0  # the rows that fit: row r spans 2+12r..11+12r
    if rows:
        # the legend on a darkened backing: white numbers stay readable over a bright frame
        backing = out[: 2 + 12 * rows, : 18 + 6 * len(str(num_objects))]
        backing[:] = (backing * LEGEND_SHADE).astype(np.uint8)
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for row, index in enumerate(range(1, rows + 1)):
            y = 2 + row * 12
            draw.rectangle((2, y, 11, y + 9), fill=tuple(int(c) for c in DAVIS_PALETTE[index]), outline=(255, 255, 255))
            draw.text((14, y - 1), str(index), fill=(255, 255, 255))
        out = np.asarray(image)
    return out


class OverlayVideo:
    """``overlay.mp4`` (every frame) and ``overlay.gif`` (at most ``gif_frames`` frames, ``gif_width`` pixels wide)
    of `outlined_overlay` frames, written into ``out_dir`` as the frames arrive (memory holds only the GIF's).

    Usage: ``with OverlayVideo(out_dir, num_objects=N, num_frames=T, fps=25) as video: video.add(frame, labels)``.
    The GIF is written when the block ends without an error; ``mp4`` and ``gif`` name the two files.
    """

    def __init__(self, out_dir: str | Path, *, num_objects: int, num_frames: int, fps: float, gif_width: int = 320,
                 gif_frames: int = 120) -> None:
        self.mp4 = Path(out_dir) / "overlay.mp4"
        self.gif = Path(out_dir) / "overlay.gif"
        self.num_objects = num_objects
        self.fps = float(fps)
        self.gif_width = gif_width
        self.gif_every = max(1, -(-num_frames // gif_frames))  # every k-th frame: at most gif_frames of them
        self._writer = viz.Mp4Writer(self.mp4, fps=self.fps)
        self._gif_images: list[np.ndarray] = []
        self._added = 0

    def __enter__(self) -> OverlayVideo:
        self._writer.__enter__()
        return self

    def add(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Append one frame (uint8 H×W×3) with its label map (H×W); returns the overlay drawn."""
        over = outlined_overlay(frame, labels, self.num_objects)
        self._writer.write(over)
        if self._added % self.gif_every == 0:
            self._gif_images.append(shrink(over, self.gif_width))
        self._added += 1
        return over

    def __exit__(self, kind, error, trace) -> None:
        self._writer.__exit__(kind, error, trace)
        if kind is None and self._gif_images:
            viz.save_gif(self.gif, self._gif_images, fps=min(self.fps / self.gif_every, 50.0))


def shrink(image: np.ndarray, max_width: int) -> np.ndarray:
    """``image`` resized (bilinear) to at most ``max_width`` pixels wide, keeping its aspect."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    size = (max_width, max(1, round(height * max_width / width)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
