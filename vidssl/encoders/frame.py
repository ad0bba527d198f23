"""Frame encoder for correspondence (CRW, MAST): a 2D ResNet-18 with stride-8 dense features."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

__all__ = ["PADDING_MODES", "ResNet18Dense", "resnet18_dense"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class ResNet18Dense(nn.Module):
    """ResNet-18 whose layer3 and layer4 keep their input resolution, so features stay at stride 8.

    Correspondence methods match pixels between frames, so they trade the last two downsamplings for
    spatial detail (CRW and MAST do the same). Modules carry torchvision's names (`conv1`, `layer1.0.conv1`,
    …): at base_width 64 the state dict loads into `torchvision.models.resnet18` with `strict=False`,
    only `fc` missing (the weights are the same; only strides differ).

    `padding_mode` is that of every padded convolution and of the max-pool: "zeros" (torchvision's),
    "reflect", "replicate" or "circular". With zeros, the border tells every cell where it sits in
    the frame (the receptive field spans the whole frame at CRW's crop sizes), so features can match
    by absolute position; CRW's palindrome walk comes home that way without learning appearance.
    Reflect padding leaves no such cue: a constant frame gives the same feature in every cell.

    Inputs: x B×3×H×W. Outputs: B×8·base_width×ceil(H/8)×ceil(W/8).
    """

    stride = 8

    def __init__(
        self,
        *,
        base_width: int = 64,
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if base_width < 1:
            raise ValueError(f"ResNet18Dense needs base_width >= 1, got {base_width}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"ResNet18Dense padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        w = base_width
        self.out_channels = 8 * w
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = w
        # (width, stride of the first block): the standard ResNet-18 has strides 1, 2, 2, 2.
        for i, (width, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 1), (8 * w, 1)]):
            downsample = None
            if stride != 1 or in_channels != width:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, width, 1, stride=stride, bias=False), norm(width)
                )
            blocks = [
                BasicBlock(in_channels, width, stride=stride, downsample=downsample, norm_layer=norm),
                BasicBlock(width, width, norm_layer=norm),
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_channels = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.padding != (0, 0):
                    m.padding_mode = padding_mode  # BasicBlock builds its convolutions with zeros

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet18Dense expects frames B×3×H×W, got shape {tuple(x.shape)}")
        x = self.relu(self.bn1(self.conv1(x)))
        if self.padding_mode == "zeros":
            x = self.maxpool(x)  # pads with -inf, as torchvision
        else:
            x = F.max_pool2d(F.pad(x, (1, 1, 1, 1), mode=self.padding_mode), 3, stride=2)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def resnet18_dense(*, base_width: int = 64, padding_mode: str = "zeros") -> ResNet18Dense:
    """The stride-8 frame ResNet-18 (out_channels 8·base_width: 512 at full width)."""
    return ResNet18Dense(base_width=base_width, padding_mode=padding_mode)
