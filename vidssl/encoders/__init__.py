"""Encoders: one factory per name, listed in `ENCODERS`, plus the one pooling every evaluation uses.

    encoder = build_encoder("r2d3d_18", base_width=16)
    features = encoder(clip)          # B×D×T'×H'×W'
    vector = pool(features)           # B×D
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from vidssl.encoders.audio import AudioCNN, audio_cnn
from vidssl.encoders.frame import ResNet18Dense, resnet18_dense
from vidssl.encoders.heads import ConvGRU, ConvGRUCell, ConvHead, MLPHead
from vidssl.encoders.video import (
    R2D3D,
    TorchvisionVideoEncoder,
    mc3_18,
    r2d3d_18,
    r2d3d_34,
    r2plus1d_18,
    r3d_18,
    s3d,
)
from vidssl.encoders.vit_video import (
    VideoViT,
    vit_video_b,
    vit_video_l,
    vit_video_s,
    vit_video_t,
)

__all__ = [
    "ENCODERS",
    "build_encoder",
    "pool",
    "TorchvisionVideoEncoder",
    "R2D3D",
    "VideoViT",
    "ResNet18Dense",
    "AudioCNN",
    "ConvGRU",
    "ConvGRUCell",
    "MLPHead",
    "ConvHead",
]

# name → factory; the names are also the Hydra config names (configs/encoder/<name>.yaml).
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
    "r2plus1d_18": r2plus1d_18,
    "s3d": s3d,
    "r2d3d_18": r2d3d_18,
    "r2d3d_34": r2d3d_34,
    "resnet18_dense": resnet18_dense,
    "audio_cnn": audio_cnn,
    "vit_video_t": vit_video_t,
    "vit_video_s": vit_video_s,
    "vit_video_b": vit_video_b,
    "vit_video_l": vit_video_l,
}


def build_encoder(name: str, **kwargs: object) -> nn.Module:
    """Build the encoder registered as `name` with the factory's keyword arguments (e.g. base_width)."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](**kwargs)


def pool(features: Tensor) -> Tensor:
    """Global average over every axis after the channels.

    Inputs: B×D×… (any number of trailing axes, or none). Outputs: B×D.
    """
    if features.ndim < 2:
        raise ValueError(f"pool expects B×D×…, got shape {tuple(features.shape)}")
    return features.flatten(2).mean(dim=2) if features.ndim > 2 else features
