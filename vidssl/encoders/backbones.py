"""Image backbones from timm and torchvision as dense feature extractors: image in, patch-token map out.

    backbone = TimmBackbone(model="vit_small_patch16_224.dino", weights="dino_deitsmall16_pretrain.pth")
    fmap = backbone(images)            # B×3×H×W (normalised) → B×D×(H//16)×(W//16)

`TimmBackbone` wraps any timm image model. For a ViT (timm's ``VisionTransformer``, and ``Eva``,
which holds DINOv3) the output is the token sequence after block ``block`` (the last by default),
passed through the model's final norm as DINO's ``get_intermediate_layers`` does, with the class,
register and storage tokens dropped and the patch tokens reshaped to a map. For a convolutional timm
model it is the feature map of stage ``block`` (``forward_intermediates``). `TorchvisionResNet`
gives a torchvision ResNet's ``layer{block}`` map.

Position embeddings at a new input size. The official DINO and DINOv2 (without registers) code
resamples the learned grid bicubically with a *scale factor* of ``(n + 0.1) / M`` (their fix for
dino#8), which samples slightly different points from timm's resampling to an output *size* with
antialiasing (what DINOv2 with registers uses, and timm's default). ``pos_resample="offset"`` gives
the former, ``"timm"`` the latter; ``"auto"`` picks the official one from the model name (``.dino``
tag or a ``*_dinov2`` name without registers: offset). DINOv3 uses rotary embeddings: nothing to
resample.

Weights come only from a file the user gives (`vidssl.encoders.weights.load_backbone_weights`);
nothing is downloaded.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POS_RESAMPLE = ("auto", "offset", "timm")
DINO_OFFSET = 0.1  # facebookresearch/dino vision_transformer.py interpolate_pos_encoding (dino#8)


def default_pos_resample(model: str) -> str:
    """The position-embedding resampling of the official code for a timm model name (see module doc)."""
    name = model.lower()
    if name.endswith(".dino") or ("dinov2" in name and "reg" not in name):
        return "offset"
    return "timm"


def _offset_pos_embed(self: nn.Module, x: Tensor) -> Tensor:
    """timm ``VisionTransformer._pos_embed`` with the official DINO/DINOv2 resampling (x: B×H×W×C)."""
    batch, height, width, dim = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos_prefix, pos = self.pos_embed[:, :prefix], self.pos_embed[:, prefix:]
    side = int(math.sqrt(pos.shape[1]))
    if side * side != pos.shape[1]:
        raise ValueError(f"pos_resample=offset needs a square position grid, got {pos.shape[1]} positions")
    if (height, width) != (side, side):
        grid = pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((height + DINO_OFFSET) / side, (width + DINO_OFFSET) / side),
                             mode="bicubic")
        if grid.shape[-2:] != (height, width):
            raise ValueError(f"offset resampling gave a {tuple(grid.shape[-2:])} grid for {height}×{width} patches")
        pos = grid.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(x.dtype)
    pos = torch.cat([pos_prefix, pos], dim=1)
    x = x.reshape(batch, height * width, dim)
    prefix_tokens = []
    if self.cls_token is not None:
        prefix_tokens.append(self.cls_token.expand(batch, -1, -1))
    if self.reg_token is not None:
        prefix_tokens.append(self.reg_token.expand(batch, -1, -1))
    if self.no_embed_class:
        x = torch.cat(prefix_tokens + [x + pos], dim=1)
    else:
        x = torch.cat(prefix_tokens + [x], dim=1) + pos
    return self.pos_drop(x)


class TimmBackbone(nn.Module):
    """A timm image model read out as a dense map (see the module doc).

    Inputs: B×3×H×W normalised images. Outputs: B×D×h×w (h = H // patch for a ViT), not L2-normalised.

    Arguments:
      model: a timm model name (``vit_small_patch16_224.dino``, ``vit_base_patch14_reg4_dinov2``,
        ``vit_small_patch16_dinov3``, ``resnet50``…); built with ``pretrained=False``.
      weights: a weights file (DINO/DINOv2/DINOv3 official ``.pth``, timm/HF ``.safetensors``) or None
        (random initialisation).
      checkpoint_key: the entry of a training checkpoint holding the weights (DINO: ``teacher``).
      block: which block's tokens (ViT, 0-based; negative counts from the end) or stage (CNN);
        None: the last.
      norm: pass ViT tokens through the model's final norm (as DINO's ``get_intermediate_layers``).
      pos_resample: "auto" | "offset" | "timm" (see the module doc).
      model_kwargs: more arguments for ``timm.create_model`` (tests build tiny models this way).
    """

    def __init__(self, *, model: str, weights: str | Path | None = None, checkpoint_key: str | None = None,
                 block: int | None = None, norm: bool = True, pos_resample: str = "auto",
                 model_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        import timm

        if pos_resample not in POS_RESAMPLE:
            raise ValueError(f"pos_resample={pos_resample!r}: expected one of {', '.join(POS_RESAMPLE)}")
        kwargs = dict(model_kwargs or {})
        kwargs.setdefault("num_classes", 0)
        try:
            self.model = timm.create_model(model, pretrained=False, **kwargs)
        except RuntimeError as err:
            raise ValueError(f"model={model!r}: timm cannot build it ({err}); "
                             f"see timm.list_models('*pattern*')") from err
        self.name = model
        self.vit = hasattr(self.model, "blocks") and hasattr(self.model, "patch_embed")
        if self.vit:
            # any input size: the patch grid follows the image
            if hasattr(self.model, "dynamic_img_size"):
                self.model.dynamic_img_size = True
            if hasattr(self.model.patch_embed, "strict_img_size"):
                self.model.patch_embed.strict_img_size = False
            if hasattr(self.model.patch_embed, "flatten") and hasattr(self.model, "dynamic_img_size"):
                self.model.patch_embed.flatten = False
                self.model.patch_embed.output_fmt = __import__("timm").layers.Format.NHWC
            resample = default_pos_resample(model) if pos_resample == "auto" else pos_resample
            if resample == "offset":
                if getattr(self.model, "pos_embed", None) is None or not hasattr(self.model, "no_embed_class"):
                    raise ValueError(f"pos_resample=offset: {model} has no learned position grid to resample")
                self.model._pos_embed = types.MethodType(_offset_pos_embed, self.model)
            self.pos_resample = resample
            self.patch_size = _patch_size(self.model)
            depth = len(self.model.blocks)
        else:
            self.pos_resample = "none"
            self.patch_size = None
            depth = len(self.model.feature_info) if hasattr(self.model, "feature_info") else 0
        self.block = _check_block(block, depth, model)
        self.norm = norm
        if weights is not None:
            from vidssl.encoders.weights import load_backbone_weights

            load_backbone_weights(self.model, weights, checkpoint_key=checkpoint_key)

    def forward(self, x: Tensor) -> Tensor:
        if self.vit:
            # rows and columns past the last whole patch are dropped, as a stride-p patch convolution
            # does (DINO's); timm's patch embedding would refuse the input instead
            p = self.patch_size
            x = x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p]
            kwargs = dict(indices=[self.block], norm=self.norm, intermediates_only=True)
        else:
            kwargs = dict(indices=[self.block], intermediates_only=True)
        out = self.model.forward_intermediates(x, **kwargs)[0]
        if out.ndim != 4:
            raise ValueError(f"{self.name}: expected a B×D×h×w map from block {self.block}, got {tuple(out.shape)}")
        return out


def _patch_size(model: nn.Module) -> int:
    size = model.patch_embed.patch_size
    size = size if isinstance(size, int) else size[0]
    return int(size)


def _check_block(block: int | None, depth: int, model: str) -> int:
    if depth == 0:
        if block is not None:
            raise ValueError(f"block={block}: {model} lists no blocks or stages")
        return -1
    index = depth - 1 if block is None else block
    if not -depth <= index < depth:
        raise ValueError(f"block={block}: {model} has {depth} blocks/stages (0..{depth - 1}, or negative from the end)")
    return index % depth


TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet read out at ``layer{block}`` (the supervised baselines of label propagation).

    Inputs: B×3×H×W normalised images. Outputs: B×D×h×w (stride 4·2^(block-1)), not L2-normalised.

    Arguments:
      model: resnet18 | resnet34 | resnet50 | resnet101 | resnet152.
      weights: a torchvision state-dict file (``.pth``, loaded with weights_only) or None (random).
      block: 1..4, the residual stage whose output is read (default 3: stride 16).
    """

    def __init__(self, *, model: str = "resnet50", weights: str | Path | None = None, block: int | None = 3) -> None:
        super().__init__()
        import torchvision

        if model not in TORCHVISION_RESNETS:
            raise ValueError(f"model={model!r}: expected one of {', '.join(TORCHVISION_RESNETS)}")
        block = 3 if block is None else block
        if block not in (1, 2, 3, 4):
            raise ValueError(f"block={block}: a ResNet has stages 1..4")
        net = getattr(torchvision.models, model)(weights=None)
        if weights is not None:
            from vidssl.encoders.weights import load_backbone_weights

            load_backbone_weights(net, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.Sequential(*[getattr(net, f"layer{i}") for i in range(1, block + 1)])
        self.block = block
        self.patch_size = None

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class ClipBackbone(nn.Module):
    """An image backbone applied to every frame of a clip: a video encoder for clustering and retrieval.

    Inputs: B×3×T×H×W normalised clips. Outputs: B×D×T×h×w (each frame's map, frames stacked), which
    `vidssl.encoders.pool` averages over time and space: frame features pooled over the clip.
    """

    def __init__(self, backbone: nn.Module, *, out_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = out_channels

    def forward(self, clip: Tensor) -> Tensor:
        if clip.ndim != 5:
            raise ValueError(f"expected a clip B×3×T×H×W, got {tuple(clip.shape)}")
        b, c, t, h, w = clip.shape
        maps = self.backbone(clip.transpose(1, 2).reshape(b * t, c, h, w))  # (B·T, D, h', w')
        return maps.reshape(b, t, *maps.shape[1:]).transpose(1, 2)


def timm_clip_encoder(*, model: str = "vit_small_patch16_224.dino", weights: str | None = None,
                      checkpoint_key: str | None = None, block: int | None = None, pos_resample: str = "auto",
                      model_kwargs: dict[str, Any] | None = None) -> ClipBackbone:
    """`TimmBackbone` as a video encoder (vidssl/configs/encoder/timm.yaml): frames' maps stacked over time."""
    backbone = TimmBackbone(model=model, weights=weights, checkpoint_key=checkpoint_key, block=block,
                            pos_resample=pos_resample, model_kwargs=dict(model_kwargs or {}))
    return ClipBackbone(backbone, out_channels=_channels(backbone))


def torchvision_clip_encoder(*, model: str = "resnet18", weights: str | None = None, block: int | None = 4,
                             ) -> ClipBackbone:
    """`TorchvisionResNet` as a video encoder (vidssl/configs/encoder/torchvision_resnet.yaml)."""
    backbone = TorchvisionResNet(model=model, weights=weights, block=block)
    return ClipBackbone(backbone, out_channels=_channels(backbone))


def _channels(backbone: nn.Module) -> int:
    with torch.no_grad():
        was = backbone.training
        size = 2 * (getattr(backbone, "patch_size", None) or 32)
        channels = backbone.eval()(torch.zeros(1, 3, size, size)).shape[1]
        backbone.train(was)
    return int(channels)
