"""Dense features of a timm or torchvision backbone for label propagation, with each protocol's frame preparation.

    fn = BackboneFeatures(TimmBackbone(model="vit_small_patch8_224.dino", weights=FILE), resize="dino",
                          short_side=480, std=DINO_STD)
    fmap = fn(frame)                 # uint8 H×W×3 → D×h×w, unit L2 norm per cell

How a frame becomes the network's input (``resize``):

- ``"none"``: as it is;
- ``"dino"``: facebookresearch/dino ``eval_video_segmentation.py`` ``read_frame``: the short side
  becomes ``short_side``, the long side ``short_side × ratio`` floored to a multiple of 64, resized by
  OpenCV's ``cv2.resize`` (bilinear, no antialiasing), as the script does;
- ``"multiple"``: the DINOv3 segmentation-tracking notebook's ``ResizeToMultiple``: the short side
  ``short_side`` and the long side in proportion, each rounded *up* to a multiple of the patch size,
  bicubic resizing of the PIL image (torchvision ``resize``);
- ``"short"``: the short side becomes ``short_side`` (rounded), antialiased bilinear.

then scaled to [0, 1] and normalised by ``mean``/``std`` (DINO's script uses std 0.228 for red,
`DINO_STD`; DINOv2/v3 and timm the usual 0.229). Attention runs through timm's fused
``scaled_dot_product_attention`` (memory-efficient on CPU and GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from vidssl.datasets.transforms import MEAN, STD

RESIZES = ("none", "dino", "multiple", "short")
DINO_STD = (0.228, 0.224, 0.225)  # facebookresearch/dino eval_video_segmentation.py color_normalize


def dino_frame_size(height: int, width: int, short_side: int = 480) -> tuple[int, int]:
    """DINO's ``read_frame`` size: the short side ``short_side``, the long side floored to a multiple of 64."""
    if height > width:
        return int((short_side * height / width) // 64 * 64), short_side
    return short_side, int((short_side * width / height) // 64 * 64)


def multiple_frame_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """The DINOv3 notebook's ``ResizeToMultiple`` size: both sides rounded up to a multiple of ``multiple``."""
    def up(side: float) -> int:
        return math.ceil(side / multiple) * multiple

    if width > height:
        new_height = up(short_side)
        return new_height, up(width * new_height / height)
    new_width = up(short_side)
    return up(height * new_width / width), new_width


def resize_frame(frame: Tensor, resize: str, short_side: int | None, patch: int | None = None) -> Tensor:
    """A uint8 H×W×3 frame prepared by rule ``resize`` (see the module doc); returns uint8 h×w×3."""
    if resize not in RESIZES:
        raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZES)}")
    if resize == "none":
        return frame
    if short_side is None or short_side < 1:
        raise ValueError(f"resize={resize} needs short_side=N (480, 960, 1440…), got {short_side}")
    height, width = frame.shape[:2]
    array = frame.cpu().numpy()
    if resize == "dino":
        import cv2

        size = dino_frame_size(height, width, short_side)
        return torch.from_numpy(cv2.resize(array, (size[1], size[0])))  # INTER_LINEAR, as read_frame
    if resize == "multiple":
        if patch is None:
            raise ValueError("resize=multiple needs the backbone's patch size")
        size = multiple_frame_size(height, width, short_side, patch)
        return torch.from_numpy(np.array(Image.fromarray(array).resize(size[::-1], Image.BICUBIC)))
    scale = short_side / min(height, width)
    size = (round(height * scale), round(width * scale))
    x = frame.permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


class BackboneFeatures:
    """A backbone's dense map of a frame, L2-normalised over channels (a `vidssl.eval.features` source).

    Inputs: frame uint8 H×W×3. Outputs: D×h×w.

    Arguments:
      backbone: B×3×H×W → B×D×h×w (`vidssl.encoders.backbones.TimmBackbone`, `TorchvisionResNet`).
      resize, short_side: the frame preparation (module doc).
      mean, std: the input normalisation.
      device: where to run (the backbone is moved there).
    """

    def __init__(self, backbone: nn.Module, *, resize: str = "none", short_side: int | None = None,
                 mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD,
                 device: str | torch.device = "cpu") -> None:
        if resize not in RESIZES:
            raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZES)}")
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.resize, self.short_side = resize, short_side
        self.patch = getattr(backbone, "patch_size", None)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)

    def prepare(self, frame: Tensor) -> Tensor:
        """The network input of one frame: 3×h×w float, resized and normalised."""
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"expected a uint8 frame H×W×3, got {frame.dtype} {tuple(frame.shape)}")
        frame = resize_frame(frame, self.resize, self.short_side, self.patch)
        x = frame.to(self.device).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def __call__(self, frame: Tensor) -> Tensor:
        out = self.backbone(self.prepare(frame)[None])[0]
        return F.normalize(out.float(), dim=0)  # F.normalize: an all-zero vector stays zero


def build_backbone_features(features: str, *, model: str, weights: str | None = None,
                            checkpoint_key: str | None = None, block: int | None = None, resize: str = "none",
                            short_side: int | None = None, mean: tuple[float, ...] | None = None,
                            std: tuple[float, ...] | None = None, pos_resample: str = "auto",
                            model_kwargs: dict | None = None,
                            device: str | torch.device = "cpu") -> BackboneFeatures:
    """``features=timm`` (any timm image model) or ``features=torchvision`` (a ResNet), weights from ``weights``.

    ``mean``/``std`` None: ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
    """
    from vidssl.encoders.backbones import TimmBackbone, TorchvisionResNet

    if features == "timm":
        net: nn.Module = TimmBackbone(model=model, weights=weights, checkpoint_key=checkpoint_key, block=block,
                                      pos_resample=pos_resample, model_kwargs=model_kwargs)
    elif features == "torchvision":
        model_kwargs = None
        if checkpoint_key:
            raise ValueError("checkpoint_key applies to timm backbones (DINO training checkpoints)")
        net = TorchvisionResNet(model=model, weights=weights, block=block)
    else:
        raise ValueError(f"features={features!r}: expected timm or torchvision")
    return BackboneFeatures(net, resize=resize, short_side=short_side, mean=tuple(mean or MEAN),
                            std=tuple(std or STD), device=device)
