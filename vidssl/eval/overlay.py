"""Overlays a person can read: each object's outline in its palette colour, and a legend naming the objects."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import binary_erosion

from vidssl import viz
from vidssl.datasets.formats import DAVIS_PALETTE


def outlined_overlay(frame: np.ndarray, labels: np.ndarray, num_objects: int, *, alpha: float = 0.5,
                     legend: bool = True) -> np.ndarray:
    """``viz.overlay_masks`` plus a 1-pixel outline of every object in its full palette colour, and (``legend``)
    a swatch with the object's index for each of ``1..num_objects`` in the top-left corner.

    Inputs: frame uint8 H×W×3, labels integer H×W (0 background). Outputs: uint8 H×W×3.
    """
    out = viz.overlay_masks(frame, labels, alpha=alpha)
    for index in range(1, num_objects + 1):
        mask = labels == index
        if mask.any():
            edge = mask & ~binary_erosion(mask, border_value=0)
            out[edge] = DAVIS_PALETTE[index]
    if legend and num_objects:
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for row, index in enumerate(range(1, num_objects + 1)):
            y = 2 + row * 12
            if y + 10 > out.shape[0]:
                break
            draw.rectangle((2, y, 11, y + 9), fill=tuple(int(c) for c in DAVIS_PALETTE[index]), outline=(255, 255, 255))
            draw.text((14, y - 1), str(index), fill=(255, 255, 255))
        out = np.asarray(image)
    return out
