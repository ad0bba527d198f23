"""Spatiotemporal encoders: torchvision's video ResNets and S3D, and DPC's R2D3D.

Every encoder maps a clip B×3×T×H×W to its last feature map B×D×T'×H'×W' (never logits) and has
`out_channels = D`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn
from torchvision.models import video as tv_video

__all__ = ["TorchvisionVideoEncoder", "R2D3D", "r3d_18", "mc3_18", "r2plus1d_18", "s3d", "r2d3d_18", "r2d3d_34"]


def check_clip(x: Tensor, name: str) -> None:
    """Raise a clear error unless x is a B×3×T×H×W clip."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"{name} expects a clip B×3×T×H×W, got shape {tuple(x.shape)}")


class TorchvisionVideoEncoder(nn.Module):
    """A torchvision video model without its pooling and classifier.

    The kept children are registered under their torchvision names (`stem`, `layer1`… or `features`), so
    `state_dict()` loads into the plain torchvision model with `strict=False`, only the classifier missing.

    Inputs: x B×3×T×H×W. Outputs: B×out_channels×T'×H'×W'.
    """

    def __init__(self, model: nn.Module, *, drop: tuple[str, ...], out_channels: int, name: str) -> None:
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.stages: list[str] = []
        for child_name, child in model.named_children():
            if child_name not in drop:
                self.add_module(child_name, child)
                self.stages.append(child_name)

    def forward(self, x: Tensor) -> Tensor:
        check_clip(x, self.name)
        for stage in self.stages:
            x = getattr(self, stage)(x)
        return x


def r3d_18() -> TorchvisionVideoEncoder:
    """torchvision R3D-18 (3D convolutions throughout), random init. Output 512×T/8×H/16×W/16."""
    return TorchvisionVideoEncoder(
        tv_video.r3d_18(weights=None), drop=("avgpool", "fc"), out_channels=512, name="r3d_18"
    )


def mc3_18() -> TorchvisionVideoEncoder:
    """torchvision MC3-18 (3D convolutions in the first stage, 2D after), random init. Output 512×T×H/16×W/16."""
    return TorchvisionVideoEncoder(
        tv_video.mc3_18(weights=None), drop=("avgpool", "fc"), out_channels=512, name="mc3_18"
    )


def r2plus1d_18() -> TorchvisionVideoEncoder:
    """torchvision R(2+1)D-18 (factorised space/time convolutions), random init. Output 512×T/8×H/16×W/16."""
    return TorchvisionVideoEncoder(
        tv_video.r2plus1d_18(weights=None), drop=("avgpool", "fc"), out_channels=512, name="r2plus1d_18"
    )


def s3d() -> TorchvisionVideoEncoder:
    """torchvision S3D (separable Inception), random init. Output 1024×T/8×H/32×W/32."""
    return TorchvisionVideoEncoder(
        tv_video.s3d(weights=None), drop=("avgpool", "classifier"), out_channels=1024, name="s3d"
    )


class _R2D3DBlock(nn.Module):
    """DPC's basic residual block: two 1×3×3 convolutions (2D stage) or two 3×3×3 ones (3D stage).

    A strided 2D block downsamples space only; a strided 3D block downsamples time too.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        temporal: bool,
        stride: int = 1,
        final_relu: bool = True,
        norm: Callable[[int], nn.Module] = nn.BatchNorm3d,
    ) -> None:
        super().__init__()
        kernel = (3, 3, 3) if temporal else (1, 3, 3)
        padding = (1, 1, 1) if temporal else (0, 1, 1)
        strides = (stride, stride, stride) if temporal else (1, stride, stride)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, stride=strides, padding=padding, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel, padding=padding, bias=False)
        self.bn2 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.final_relu = final_relu
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=strides, bias=False), norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as the official block: no extra activation-sized tensor per block
        return self.relu(out) if self.final_relu else out


class R2D3D(nn.Module):
    """The ResNet of DPC/MemDPC (Han et al. 2019/2020): 2D (1×3×3) blocks in stages 1–2, 3D (3×3×3) in 3–4.

    Widths w, 2w, 4w, 4w (DPC keeps the last stage at 4w = 256 for w = 64), and the very last block has
    no final ReLU, as in DPC, so the features that its predictive loss compares can be negative.
    `track_running_stats=False` gives DPC's pretraining batch norm: batch statistics in eval mode too, and
    no running-statistics buffers (MemDPC and both papers' fine-tuning keep running statistics).

    Inputs: x B×3×T×H×W. Outputs: B×4w×ceil(T/4)×H/32×W/32 (e.g. 5×128×128 → 2×4×4).
    """

    def __init__(
        self,
        *,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        base_width: int = 64,
        norm: Callable[[int], nn.Module] = nn.BatchNorm3d,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1 or base_width < 1:
            raise ValueError(f"R2D3D needs 4 stages of >= 1 block and base_width >= 1, got {layers}, {base_width}")
        if not track_running_stats:
            norm = partial(norm, track_running_stats=False)
        w = base_width
        self.out_channels = 4 * w
        self.conv1 = nn.Conv3d(3, w, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)
        self.bn1 = norm(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        widths = (w, 2 * w, 4 * w, 4 * w)
        strides = (1, 2, 2, 2)
        temporal = (False, False, True, True)
        in_channels = w
        for i in range(4):
            blocks = []
            for j in range(layers[i]):
                last = i == 3 and j == layers[i] - 1
                blocks.append(
                    _R2D3DBlock(
                        in_channels,
                        widths[i],
                        temporal=temporal[i],
                        stride=strides[i] if j == 0 else 1,
                        final_relu=not last,
                        norm=norm,
                    )
                )
                in_channels = widths[i]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        check_clip(x, "R2D3D")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def r2d3d_18(*, base_width: int = 64, track_running_stats: bool = True) -> R2D3D:
    """R2D3D-18 (DPC's default backbone); base_width 64 as in the paper, smaller for fast CPU runs.
    `track_running_stats=False`: DPC's pretraining batch norm (batch statistics only)."""
    return R2D3D(layers=(2, 2, 2, 2), base_width=base_width, track_running_stats=track_running_stats)


def r2d3d_34(*, base_width: int = 64, track_running_stats: bool = True) -> R2D3D:
    """R2D3D-34 (DPC's larger backbone)."""
    return R2D3D(layers=(3, 4, 6, 3), base_width=base_width, track_running_stats=track_running_stats)

