"""Colour-space conversions shared by the correspondence methods and the raw-pixel baseline."""

from __future__ import annotations

import torch

# sRGB (D65) ↔ CIE XYZ, and the D65 white point
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_DELTA = 6 / 29


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] → CIE Lab (D65).

    Inputs:  rgb with the 3 channels at dim 1 (B×3×…)
    Outputs: Lab, same shape: L ∈ [0, 100], a and b roughly in [-110, 110]
    """
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4)
    matrix = _RGB_TO_XYZ.to(rgb)
    xyz = torch.einsum("ij,bj...->bi...", matrix, linear)
    xyz = xyz / _WHITE.to(rgb).view(1, 3, *([1] * (rgb.ndim - 2)))
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) → sRGB clipped to [0, 1]; the inverse of `rgb_to_lab` inside the sRGB gamut.

    Inputs:  Lab with the 3 channels at dim 1 (B×3×…)
    Outputs: rgb, same shape, in [0, 1]
    """
    l, a, b = lab.unbind(dim=1)
    fy = (l + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29))
    xyz = xyz * _WHITE.to(lab).view(1, 3, *([1] * (lab.ndim - 2)))
    linear = torch.einsum("ij,bj...->bi...", torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0, 1)
