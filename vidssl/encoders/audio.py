"""Audio encoder: a small VGG-style 2D CNN on log-mel spectrograms."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["AudioCNN", "audio_cnn"]


class AudioCNN(nn.Module):
    """Four stages of two 3×3 conv-norm-ReLU layers, widths w, 2w, 4w, 8w, with 2×2 max-pooling before
    stages 2–4 (frequency and time are downsampled alike, as in the VGGish-style audio nets of AVC/XDC).

    Inputs: x B×in_channels×F×T (log-mel: mel bins × frames). Outputs: B×8w×floor(F/8)×floor(T/8).
    """

    stride = 8

    def __init__(
        self, *, base_width: int = 64, in_channels: int = 1, norm: Callable[[int], nn.Module] = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        if base_width < 1 or in_channels < 1:
            raise ValueError(f"AudioCNN needs base_width >= 1 and in_channels >= 1, got {base_width}, {in_channels}")
        self.in_channels = in_channels
        self.out_channels = 8 * base_width
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate([base_width, 2 * base_width, 4 * base_width, 8 * base_width]):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU(inplace=True)]
                channels = width
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AudioCNN expects a spectrogram B×{self.in_channels}×F×T, got shape {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.stride:
            raise ValueError(f"AudioCNN needs at least {self.stride} mel bins and frames, got {tuple(x.shape[-2:])}")
        return self.layers(x)


def audio_cnn(*, base_width: int = 64, in_channels: int = 1) -> AudioCNN:
    """The log-mel audio CNN (out_channels 8·base_width: 512 at full width)."""
    return AudioCNN(base_width=base_width, in_channels=in_channels)
