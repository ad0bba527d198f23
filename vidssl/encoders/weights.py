"""Load a backbone's weights from a file the user gives: the official DINO, DINOv2 and DINOv3 formats and
timm/Hugging Face safetensors. Nothing is downloaded.

    load_backbone_weights(model, "dino_vitbase8_pretrain.pth")                    # DINO backbone
    load_backbone_weights(model, "checkpoint.pth", checkpoint_key="teacher")     # DINO training checkpoint
    load_backbone_weights(model, "dinov2_vits14_reg4_pretrain.pth")              # DINOv2 hub file
    load_backbone_weights(model, "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")  # DINOv3 hub file
    load_backbone_weights(model, "model.safetensors")                            # timm / HF hub

Files are read with ``torch.load(weights_only=True)`` (a DINO training checkpoint's ``args`` is an
``argparse.Namespace``, allowed by name) or safetensors. Then, in order: ``checkpoint_key`` selects
an entry (DINO's ``teacher``/``student``); the ``module.`` (DDP) and ``backbone.`` (DINO's
multi-crop wrapper) prefixes are stripped; DINOv2's chunked block names (``blocks.C.I.``) are unchunked; keys of a projection head (``head.``) that the backbone
does not have are dropped; and timm's own ``checkpoint_filter_fn`` for the model's family converts
the official layouts (DINOv2's registers and SwiGLU names, DINOv3's storage tokens and RoPE). The
result must then fit the model exactly (strict), or the error names the file and the keys.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import torch
from torch import Tensor, nn

STRIP_PREFIXES = ("module.", "backbone.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def read_state_dict(path: str | Path, *, checkpoint_key: str | None = None) -> dict[str, Tensor]:
    """The tensors of a weights file (``.safetensors`` or a torch file), the ``checkpoint_key`` entry if given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (re-raised with the file's name)
            raise ValueError(f"{path}: not a weights file torch.load(weights_only=True) can read: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    if checkpoint_key:
        if checkpoint_key not in state:
            raise KeyError(f"{path}: checkpoint_key={checkpoint_key!r} is not in the file; its entries are "
                           f"{sorted(state)[:12]}")
        state = state[checkpoint_key]
    elif not any(isinstance(v, Tensor) for v in state.values()):
        entries = [k for k, v in state.items() if isinstance(v, dict)]
        raise ValueError(f"{path}: holds no tensors at the top level; pass checkpoint_key= one of {entries} "
                         f"(a DINO training checkpoint: teacher)")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def strip_prefixes(state: dict[str, Tensor], prefixes: tuple[str, ...] = STRIP_PREFIXES) -> dict[str, Tensor]:
    """Keys without leading ``module.``/``backbone.`` (DDP and DINO's MultiCropWrapper)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def unchunk_blocks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """DINOv2 training checkpoints keep blocks in chunks (``blocks.C.I.``); the hub files and timm use ``blocks.I.``."""
    if not any(_CHUNKED.match(k) for k in state):
        return state
    return {_CHUNKED.sub(lambda m: f"blocks.{m.group(2)}.", k): v for k, v in state.items()}


def _timm_filter(model: nn.Module):
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None) if module.__name__.startswith("timm.") else None


def _check_kept_qkv_bias(state: dict[str, Tensor], own: dict[str, Tensor], path: str | Path) -> None:
    """DINOv3 files carry q/k/v biases (k masked to zero); a timm model without them would drop them silently."""
    biases = [v for k, v in state.items() if k.endswith("attn.qkv.bias")]
    if not biases or any(k.endswith(("q_bias", "qkv.bias")) for k in own):
        return
    if any(b.ne(0).any() for b in biases):
        raise ValueError(f"{path}: the file's attention has q/v biases but the model has none; use the model "
                         f"with biases (for DINOv3, the *_dinov3_qkvb names, e.g. vit_small_patch16_dinov3_qkvb)")


def load_backbone_weights(model: nn.Module, path: str | Path, *, checkpoint_key: str | None = None) -> nn.Module:
    """Load a weights file into ``model`` (see the module doc); returns the model."""
    state = unchunk_blocks(strip_prefixes(read_state_dict(path, checkpoint_key=checkpoint_key)))
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and k not in own)}
    convert = _timm_filter(model)
    if convert is not None:
        _check_kept_qkv_bias(state, own, path)
        state = convert(state, model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit {type(model).__name__}: missing {missing[:8]}"
                         f"{' …' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' …' if len(unexpected) > 8 else ''} (is model= the architecture the file was "
                         f"trained as?)")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: weight shapes do not fit the model: {wrong[:5]}")
    model.load_state_dict(state)
    return model
