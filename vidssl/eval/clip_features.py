"""Clip-level features from a frame encoder (CRW, MAST): every frame encoded alone, then pooled over the clip.

Retrieval, the linear probe and k-means pseudo-labelling read one feature per clip from an encoder of clips
(B×C×T×H×W). A frame encoder (``vidssl.encoders.frame.ResNet18Dense``) takes B×C×H×W; `as_clip_encoder`
folds time into the batch for it, so the clip's feature is the average of its frames' feature maps over
time and space (``vidssl.encoders.pool``), the same read-out a video encoder gets.
"""

from __future__ import annotations

from torch import Tensor, nn

from vidssl.encoders.frame import ResNet18Dense


class FramesOfClip(nn.Module):
    """A frame encoder applied to each frame of a clip.

    Inputs: video B×C×T×H×W. Outputs: B×D×T×h×w (the frame encoder's D×h×w map of each frame).
    """

    def __init__(self, frame_encoder: nn.Module) -> None:
        super().__init__()
        self.frame_encoder = frame_encoder
        self.out_channels = getattr(frame_encoder, "out_channels", None)

    def forward(self, video: Tensor) -> Tensor:
        if video.ndim != 5:
            raise ValueError(f"FramesOfClip expects clips B×C×T×H×W, got shape {tuple(video.shape)}")
        b, c, t, h, w = video.shape
        maps = self.frame_encoder(video.transpose(1, 2).reshape(b * t, c, h, w))
        return maps.reshape(b, t, *maps.shape[1:]).transpose(1, 2)


def is_frame_encoder(encoder: nn.Module) -> bool:
    """Whether ``encoder`` takes single frames (B×C×H×W) rather than clips."""
    return isinstance(encoder, ResNet18Dense)


def as_clip_encoder(encoder: nn.Module) -> nn.Module:
    """``encoder`` itself for a clip encoder; a frame encoder wrapped in `FramesOfClip`."""
    return FramesOfClip(encoder) if is_frame_encoder(encoder) else encoder
