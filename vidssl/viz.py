"""Pictures a user keeps: mask overlays, montages, cluster grids (labelled preview sheets: `vidssl.app.preview_sheets`).

Every function takes and returns plain ``uint8 H×W×3`` numpy images (or ``T×H×W×3`` stacks); writers
save PNG (Pillow), GIF (Pillow) and MP4 (PyAV, H.264).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vidssl.datasets import encode


def to_uint8_image(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float image in [0, 1] (or uint8) → uint8; accepts ``H×W×3`` or ``3×H×W`` tensors."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
            x = x.permute(1, 2, 0)
        x = x.numpy()
    if x.dtype != np.uint8:
        x = (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def overlay_masks(frames: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend DAVIS-palette colours of object masks over frames; background (0) is left as it is.

    Inputs:  frames uint8 (T×)H×W×3, masks integer (T×)H×W with 0 = background
    Outputs: uint8 (T×)H×W×3
    """
    from vidssl.datasets.formats import DAVIS_PALETTE

    frames = np.asarray(frames)
    masks = np.asarray(masks)
    if frames.shape[:-1] != masks.shape:
        raise ValueError(f"frames {frames.shape} and masks {masks.shape} differ in size")
    fg = masks > 0
    out = frames.copy()  # background pixels stay as they are; only the objects' pixels are blended
    colours = np.asarray(DAVIS_PALETTE, dtype=np.float64)[masks[fg].astype(np.int64)]
    out[fg] = ((1 - alpha) * frames[fg].astype(np.float64) + alpha * colours + 0.5).astype(np.uint8)
    return out


def montage(images: Sequence[np.ndarray], ncols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized ``H×W×3`` images row by row, ``ncols`` per row, with ``pad`` pixels between."""
    if not images:
        raise ValueError("montage of no images")
    images = [to_uint8_image(np.asarray(im) if not isinstance(im, torch.Tensor) else im) for im in images]
    h, w = images[0].shape[:2]
    if any(im.shape[:2] != (h, w) for im in images):
        raise ValueError("montage needs images of one size")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    sheet = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, ncols)
        sheet[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return sheet


def clip_frames(clip: torch.Tensor, normalized: bool = True) -> list[np.ndarray]:
    """A ``C×T×H×W`` clip (normalised as by the transforms, or in [0, 1]) → T uint8 frames."""
    from vidssl.datasets.transforms import denormalize_video

    clip = denormalize_video(clip.float()) if normalized else clip.float().clamp(0, 1)
    return [to_uint8_image(clip[:, t]) for t in range(clip.shape[1])]


def cluster_grid(
    rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None, band: int = 6
) -> np.ndarray:
    """One row of representative frames per cluster; a coloured band left of each row tells rows apart.

    ``titles`` (one per row) are drawn with Pillow's default font when given.
    """
    from PIL import ImageDraw

    from vidssl.datasets.formats import DAVIS_PALETTE

    ncols = max(len(r) for r in rows)
    h, w = np.asarray(rows[0][0]).shape[:2]
    blank = np.full((h, w, 3), 255, np.uint8)
    tiles = []
    for k, r in enumerate(rows):
        tag = np.full((h, w, 3), 255, np.uint8)
        tag[:, :band] = DAVIS_PALETTE[1 + k % 255]
        tiles.append(tag)
        tiles += [to_uint8_image(np.asarray(im)) for im in r] + [blank] * (ncols - len(r))
    grid = montage(tiles, ncols=ncols + 1)
    if titles:
        image = Image.fromarray(grid)
        draw = ImageDraw.Draw(image)
        for k, title in enumerate(titles):
            draw.text((band + 4, 2 + k * (h + 2) + h // 2 - 6), str(title), fill=(0, 0, 0))
        grid = np.asarray(image)
    return grid


def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_image(image)).save(path)
    return path


def save_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float = 8.0) -> Path:
    """An animated GIF of uint8 H×W×3 frames, looping; each frame in 256 colours of its own from Pillow's fast
    octree. Pillow's default for RGB frames, the median cut, is closer in colour (mean error 5.3 against 6.5
    grey levels at 320×180; the octree shows some banding in smooth gradients) but 100× slower (70 against
    0.6 ms a frame): too slow for overlays written by default. Palette colours that cover many pixels, as the
    overlays' outlines, come through exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(to_uint8_image(f)).quantize(256, method=Image.Quantize.FASTOCTREE,
                                                          dither=Image.Dither.NONE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


class Mp4Writer(encode.Mp4Writer):
    """`vidssl.datasets.encode.Mp4Writer` taking any image `to_uint8_image` takes (float in [0, 1], C×H×W…)."""

    def write(self, frame: np.ndarray | torch.Tensor) -> None:
        super().write(to_uint8_image(frame))


def save_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float = 8) -> Path:
    """H.264 MP4 through PyAV (`Mp4Writer`); odd sizes are padded to even, as yuv420p requires."""
    with Mp4Writer(path, fps=fps) as writer:
        for f in frames:
            writer.write(f)
    return Path(path)
