"""Audio encoders on log-mel spectrograms: a small VGG-style 2D CNN, and a 2D ResNet (SeLaVi's)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["AudioCNN", "AudioResNet", "audio_cnn", "audio_resnet9"]


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


class AudioResNet(nn.Module):
    """torchvision's 2D ResNet (BasicBlock) on a 1-channel spectrogram, without pooling and classifier: the
    audio network of SeLaVi (ResNet-9: one block per stage) and of other audio-visual methods.

    The children keep torchvision's names (``conv1``, ``bn1``, ``layer1``…), so the weights of such a
    network load directly. Inputs: x B×1×F×T. Outputs: B×512×F/32×T/32 (rounded up).
    """

    def __init__(self, *, blocks: tuple[int, int, int, int] = (1, 1, 1, 1)) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, list(blocks))
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_channels = 512
        self.stages = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        for name in self.stages:
            self.add_module(name, getattr(net, name))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"AudioResNet expects a spectrogram B×1×F×T, got shape {tuple(x.shape)}")
        for name in self.stages:
            x = getattr(self, name)(x)
        return x


def audio_resnet9() -> AudioResNet:
    """SeLaVi's audio network: a ResNet with one BasicBlock per stage on 1-channel spectrograms."""
    return AudioResNet(blocks=(1, 1, 1, 1))
