"""Dense per-frame features for label propagation: one frame in, one L2-normalised feature map out.

A feature source is a callable ``frame (uint8 H×W×3) -> D×h×w`` float features whose vector at every
cell has unit L2 norm, so that a dot product is a cosine similarity (what `vidssl.eval.propagate`
expects). Sources:

- `PixelFeatures`: Lab colour average-pooled to the feature stride, the classic baseline;
- `EncoderFeatures`: any vidssl encoder; a frame encoder (B×3×H×W → B×D×h×w) runs on the frame
  directly, a video encoder (B×3×T×H×W → B×D×T'×h×w) on the frame as a static clip of ``clip_len``
  frames, its temporal axis averaged away. ``layer`` picks the map: by default (``"auto"``) the
  stride-8 frame ResNet gives its layer3 output (256-d at full width), as videowalk's ``test.py``
  removes layer4 before label propagation, unless the checkpoint exports another layer (MAST: its
  output); other encoders give their output (``"output"``); any submodule name (``"layer2"``,
  ``"layer4"``…) gives that submodule's output;
- `vidssl.eval.backbone_features.BackboneFeatures`: a timm or torchvision image backbone (DINO,
  DINOv2, DINOv3, ResNets…) with weights from a file, its patch-token map;
- `build_feature_fn("pixels" | "random" | "checkpoint" | "timm" | "torchvision", ...)`: what
  ``tools/propagate.py`` offers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidssl.color import rgb_to_lab
from vidssl.datasets.transforms import MEAN, STD, normalize_video

if TYPE_CHECKING:
    from vidssl.run import Checkpoint

FEATURE_SOURCES = ("pixels", "random", "checkpoint", "timm", "torchvision")
AUTO, OUTPUT = "auto", "output"


def default_layer(encoder: nn.Module) -> str:
    """The feature map label propagation reads by default (``layer="auto"``) when the checkpoint exports none.

    layer3 of the stride-8 frame ResNet, as videowalk's ``test.py`` (it drops layer4); the output of every
    other encoder.
    """
    from vidssl.encoders.frame import ResNet18Dense

    return "layer3" if isinstance(encoder, ResNet18Dense) else OUTPUT


class _Stop(Exception):
    """Raised by a forward hook once the wanted layer has run, so later layers are not computed."""


def run_to_layer(encoder: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of submodule ``layer`` of ``encoder`` on input ``x`` (``"output"``: the encoder's own).

    The forward pass stops right after that submodule: later layers cost nothing.
    """
    if layer == OUTPUT:
        return encoder(x)
    modules = dict(encoder.named_modules())
    if layer not in modules or layer == "":
        names = [n for n, _ in encoder.named_children()]
        raise ValueError(f"layer={layer!r}: {type(encoder).__name__} has no such submodule; its top-level "
                         f"submodules are {names} (or use 'output')")
    kept: list[Tensor] = []

    def keep(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        kept.append(output)
        raise _Stop

    handle = modules[layer].register_forward_hook(keep)
    try:
        with contextlib.suppress(_Stop):  # the hook stops the forward pass once the layer has run
            encoder(x)
    finally:
        handle.remove()
    if not kept:
        raise ValueError(f"layer={layer!r} of {type(encoder).__name__} did not run in its forward pass")
    return kept[0]


def _check_frame(frame: Tensor) -> None:
    if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected a uint8 frame H×W×3, got {frame.dtype} {tuple(frame.shape)}")


class PixelFeatures:
    """Lab colour average-pooled over stride×stride cells: the raw-pixel baseline of label propagation.

    Inputs: frame uint8 H×W×3. Outputs: 4×ceil(H/stride)×ceil(W/stride), unit norm per cell.

    Normalisation: Lab is scaled to about [-1, 1] and a constant 1 is appended before the L2
    normalisation, so the cosine of two cells falls with their Lab distance; normalising the three
    Lab values alone would keep only their direction and equate a colour with every scaled copy of it.
    """

    def __init__(self, *, stride: int = 8, device: str | torch.device = "cpu") -> None:
        if stride < 1:
            raise ValueError(f"stride must be ≥ 1, got {stride}")
        self.stride = stride
        self.device = torch.device(device)

    def __call__(self, frame: Tensor) -> Tensor:
        _check_frame(frame)
        rgb = frame.to(self.device).permute(2, 0, 1).float() / 255
        lab = rgb_to_lab(rgb[None])[0]  # (3, H, W)
        scaled = torch.stack([(lab[0] - 50) / 50, lab[1] / 50, lab[2] / 50])
        # ceil_mode: the border cells average the pixels they do cover, giving the same grid as a
        # stride-8 encoder with padding
        pooled = F.avg_pool2d(scaled[None], self.stride, self.stride, ceil_mode=True)[0]  # (3, h, w)
        ones = torch.ones_like(pooled[:1])
        return F.normalize(torch.cat([pooled, ones]), dim=0)


def _is_video_encoder(encoder: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv3d) for m in encoder.modules())


class EncoderFeatures:
    """Dense features of an encoder, L2-normalised over channels.

    Inputs: frame uint8 H×W×3. Outputs: D×h×w (the map of ``layer``).

    Arguments:
      encoder: a frame encoder (B×3×H×W → B×D×h×w) or a video encoder (B×3×T×H×W → B×D×T'×h×w).
      layer: "auto" (`default_layer`: layer3 for the stride-8 frame ResNet, as videowalk's DAVIS
        evaluation; the output otherwise), "output", or the name of a submodule whose output to use
        (`build_feature_fn` passes the layer a checkpoint exports).
      video: whether it is a video encoder; None decides by whether it contains a 3D convolution.
      clip_len: a video encoder sees the frame repeated clip_len times (1: a single-frame clip);
        its output's temporal axis is averaged.
      device: where to run; None keeps the encoder where it is (a given device moves it there).
      mean, std: the input normalisation the encoder was trained with (vidssl's transforms' default).
    The encoder is switched to eval mode during each call and back afterwards.
    """

    def __init__(self, encoder: nn.Module, *, video: bool | None = None, clip_len: int = 1,
                 device: str | torch.device | None = None, mean: tuple[float, ...] = MEAN,
                 std: tuple[float, ...] = STD, layer: str = AUTO) -> None:
        if clip_len < 1:
            raise ValueError(f"clip_len must be ≥ 1, got {clip_len}")
        if device is not None:
            encoder = encoder.to(device)
        parameter = next(encoder.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device(device or "cpu")
        self.encoder = encoder
        self.video = _is_video_encoder(encoder) if video is None else video
        self.clip_len = clip_len
        self.mean, self.std = mean, std
        self.layer = default_layer(encoder) if layer == AUTO else layer

    @torch.inference_mode()
    def __call__(self, frame: Tensor) -> Tensor:
        _check_frame(frame)
        # eval mode for the call only: a training loop may pass its own encoder for periodic evaluation
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            out = self._features(frame)
        finally:
            self.encoder.train(was_training)
        return F.normalize(out.float(), dim=0)  # default ε 1e-12, as the official evaluation

    def _features(self, frame: Tensor) -> Tensor:
        clip = frame.to(self.device).permute(2, 0, 1)[:, None].float() / 255  # (3, 1, H, W)
        clip = normalize_video(clip, self.mean, self.std)
        if self.video:
            out = run_to_layer(self.encoder, clip.expand(-1, self.clip_len, -1, -1)[None], self.layer)
            if out.ndim != 5:
                raise ValueError(f"a video encoder must return B×D×T×h×w, got {tuple(out.shape)}")
            return out[0].mean(dim=1)
        out = run_to_layer(self.encoder, clip[:, 0][None], self.layer)  # (1, D, h, w)
        if out.ndim != 4:
            raise ValueError(f"a frame encoder must return B×D×h×w, got {tuple(out.shape)}; pass video=True "
                             f"for a video encoder")
        return out[0]


def build_feature_fn(features: str, *, encoder_cfg: Any = None, checkpoint: str | Path | Checkpoint | None = None,
                     stride: int = 8, clip_len: int = 1, layer: str = AUTO,
                     device: str | torch.device = "cpu", **backbone: Any) -> Any:
    """The feature source named on the command line.

    Arguments:
      features: "pixels" (Lab pixels pooled to ``stride``), "random" (the ``encoder_cfg`` encoder at
        its fixed-seed random initialisation; the same as ``features=checkpoint checkpoint=random``; with
        ``checkpoint`` a path, the random twin of that checkpoint's own architecture) or
        "checkpoint" (the encoder a checkpoint was trained with, built from the checkpoint's own config;
        ``encoder_cfg`` only as a fallback).
      checkpoint: a path, a run directory, ``"random"``, or a `Checkpoint` already loaded.
      layer: the encoder's feature map (see `EncoderFeatures`); "auto" takes the checkpoint's exported layer.
      backbone: with "timm" / "torchvision", `vidssl.eval.backbone_features.build_backbone_features`'s
        arguments (model, weights, checkpoint_key, block, resize, short_side, mean, std…).
    """
    if features in ("timm", "torchvision"):
        from vidssl.eval.backbone_features import build_backbone_features

        return build_backbone_features(features, device=device, **backbone)
    if features == "pixels":
        return PixelFeatures(stride=stride, device=device)
    if features not in FEATURE_SOURCES:
        raise ValueError(f"features={features!r}: expected one of {', '.join(FEATURE_SOURCES)}")
    from vidssl.run import RANDOM, Checkpoint  # hydra is imported there; pixels do not need it

    if features == "random":
        if encoder_cfg is None:
            raise ValueError("features=random needs an encoder config (encoder=NAME)")
        # with a checkpoint named: the random twin of its architecture, not of the encoder= default
        named = checkpoint not in (None, "") and str(checkpoint) != RANDOM and not isinstance(checkpoint, Checkpoint)
        source = Checkpoint.open(f"{RANDOM}:{checkpoint}") if named else Checkpoint.random(encoder=encoder_cfg)
    else:
        if checkpoint in (None, ""):
            raise ValueError("features=checkpoint needs checkpoint=PATH (a .pt file or a run directory) or "
                             "checkpoint=random")
        if str(checkpoint) == RANDOM and encoder_cfg is None:
            raise ValueError("checkpoint=random needs an encoder config (encoder=NAME)")
        source = Checkpoint.open(checkpoint, encoder=encoder_cfg)
    if layer == AUTO and source.exports.feature_layer is not None:
        layer = source.exports.feature_layer
    return EncoderFeatures(source.build_encoder(), clip_len=clip_len, device=device, layer=layer)
