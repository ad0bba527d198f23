"""videowalk (Jabri et al., CRW) checkpoints → vidssl.

    python tools/convert_checkpoint.py source=videowalk in=pretrained.pth out=crw.pt

``train.py`` saves ``{"model": CRW.state_dict(), "optimizer", "lr_scheduler", "epoch", "args"}`` with
its ``argparse.Namespace`` as ``args`` (allowed by name in `SAFE_GLOBALS`; nothing else is unpickled).
The CRW state dict holds the encoder under ``encoder.model.`` (a torchvision ResNet-18 whose layer3
and layer4 have stride 1, wrapped to run frame by frame) and the projection head under
``selfsim_fc.``. They map onto vidssl's ``resnet18_dense`` (the same modules under the same names) and
``CRW.head``:

- ``--model-type scratch`` trains with reflection padding → ``padding_mode: reflect``;
  ``scratch_zeropad`` and ``imagenet18`` keep zeros → ``padding_mode: zeros``;
- older checkpoints name a convolution ``conv1.1``/``conv2.1`` (a padding module first); ``test.py``
  renames those to ``conv1``/``conv2``, and so does this converter;
- the head is one linear layer (``--head-depth 0``, the default) → ``CRW.head``; a deeper MLP head
  has no vidssl counterpart, so only the encoder is kept and the task gets ``embed_dim: null``.

The DAVIS evaluation uses the encoder only (layer3: ``propagate.py features=checkpoint``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

SAFE_GLOBALS = [argparse.Namespace]

ENCODER_PREFIX = "encoder.model."
HEAD_PREFIX = "selfsim_fc."
PADDING = {"scratch": "reflect", "scratch_zeropad": "zeros", "imagenet18": "zeros"}


def _plain(value: Any) -> Any:
    """An argument value as plain data (what a weights_only checkpoint may hold), or None."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
        return list(value)
    return None


def _encoder_key(key: str) -> str:
    name = key[len(ENCODER_PREFIX):]
    for old in ("conv1.1.weight", "conv2.1.weight"):
        if name.endswith(old):
            name = name[: -len(old)] + old.replace(".1.", ".")
    return name


def convert(state: dict) -> dict:
    """An official videowalk checkpoint (loaded) → ``{"encoder", "model", "config"}`` of vidssl."""
    if not isinstance(state, dict) or "model" not in state:
        raise KeyError(f"not a videowalk checkpoint: expected a dict with 'model' (train.py's format), got keys "
                       f"{sorted(state)[:8] if isinstance(state, dict) else type(state).__name__}")
    weights = state["model"]
    args = state.get("args")
    arguments = {k: _plain(v) for k, v in vars(args).items()} if isinstance(args, argparse.Namespace) else {}
    model_type = arguments.get("model_type") or "scratch"
    if model_type not in PADDING:
        raise ValueError(f"videowalk --model-type {model_type!r} is not a ResNet-18 vidssl has; convertible: "
                         f"{', '.join(PADDING)}")
    encoder = {_encoder_key(k): v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise KeyError(f"no '{ENCODER_PREFIX}*' weights in the checkpoint's model (keys start with "
                       f"{sorted({k.split('.')[0] for k in weights})})")
    missing = [layer for layer in ("layer1", "layer2", "layer3", "layer4")
               if not any(k.startswith(layer + ".") for k in encoder)]
    if missing:
        raise KeyError(f"the checkpoint's encoder has no {missing} (trained with --remove-layers?); "
                       f"resnet18_dense needs all four")
    stray = sorted(k for k in weights if not k.startswith((ENCODER_PREFIX, HEAD_PREFIX)))
    if stray:
        raise KeyError(f"unexpected weights outside the encoder and head: {stray[:5]}")
    if encoder["conv1.weight"].shape[0] != 64:
        raise ValueError(f"encoder width {encoder['conv1.weight'].shape[0]} is not ResNet-18's 64")

    head = {k[len(HEAD_PREFIX):]: v for k, v in weights.items() if k.startswith(HEAD_PREFIX)}
    linear_head = set(head) == {"0.weight", "0.bias"}
    model = {f"encoder.{k}": v for k, v in encoder.items()}
    if linear_head:
        model["head.weight"], model["head.bias"] = head["0.weight"], head["0.bias"]

    encoder_cfg = {"_target_": "vidssl.encoders.frame.resnet18_dense", "base_width": 64,
                   "padding_mode": PADDING[model_type]}
    patch = arguments.get("patch_size") if arguments.get("frame_aug") == "grid" else None
    task_cfg = {
        "_target_": "vidssl.tasks.crw.CRW",
        "encoder": encoder_cfg,
        "embed_dim": int(head["0.weight"].shape[0]) if linear_head else None,
        "temperature": float(arguments.get("temp") or 0.07),
        "edge_dropout": float(arguments.get("dropout") or 0.0),
        "patch_size": int(patch[0]) if patch else None,
        "patch_stride": None,
    }
    return {
        "encoder": {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in encoder.items()},
        "model": model,
        "config": {"encoder": encoder_cfg, "task": {"model": task_cfg},
                   "official": {"source": "videowalk", "epoch": _plain(state.get("epoch")), "args": arguments}},
    }
