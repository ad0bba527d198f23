"""Encoders: one factory per name (each named by a Hydra config, ``vidssl/configs/encoder/<name>.yaml``, the
registry), plus the one pooling every evaluation uses.

    encoder = r2d3d_18(base_width=16)
    features = encoder(clip)          # B×D×T'×H'×W'
    vector = pool(features)           # B×D
"""

from __future__ import annotations

from torch import Tensor

from vidssl.encoders.audio import AudioCNN, audio_cnn
from vidssl.encoders.frame import ResNet18Dense, resnet18_dense
from vidssl.encoders.heads import ConvGRU, ConvGRUCell, MLPHead
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
    "pool",
    "TorchvisionVideoEncoder",
    "R2D3D",
    "VideoViT",
    "ResNet18Dense",
    "AudioCNN",
    "ConvGRU",
    "ConvGRUCell",
    "MLPHead",
    "audio_cnn",
    "mc3_18",
    "r2d3d_18",
    "r2d3d_34",
    "r2plus1d_18",
    "r3d_18",
    "resnet18_dense",
    "s3d",
    "VideoViT",
    "vit_video_b",
    "vit_video_l",
    "vit_video_s",
    "vit_video_t",
]


def pool(features: Tensor) -> Tensor:
    """Global average over every axis after the channels.

    Inputs: B×D×… (any number of trailing axes, or none). Outputs: B×D.
    """
    if features.ndim < 2:
        raise ValueError(f"pool expects B×D×…, got shape {tuple(features.shape)}")
    return features.flatten(2).mean(dim=2) if features.ndim > 2 else features
