"""Import a V-JEPA or V-JEPA 2 checkpoint (facebookresearch/jepa, /vjepa2) as a vidssl `VJEPA` checkpoint.

The official file (`app/vjepa/train.py`'s ``save_checkpoint``) is ``{"encoder", "predictor",
"target_encoder", "opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr"}``: three state dicts
saved through DistributedDataParallel (``module.``) around the multi-clip wrappers (``backbone.``), with
vidssl's parameter names once both prefixes are stripped. The converted checkpoint's ``encoder`` is the
**target encoder**, the one the official evaluations read (``checkpoint_key: target_encoder``); ``model``
holds all three, so ``trainer.init_from`` continues pretraining from the file.

What the weights do not say is read from conventions and can be edited in the written ``config``:
heads per width (the official sizes; 1408 wide is vit_giant_xformers, 22 heads), the predictor's heads
(12, every V-JEPA 2 config), the clip size (from the sin-cos table when there is one, else 16 frames at
256 px, the V-JEPA 2 pretraining clip) and ``uniform_power`` (it changes only a table the file holds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

SAFE_GLOBALS: list = []  # the official dict holds tensors, numbers, None and the optimiser's plain state

HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 22, 1664: 16}
PREDICTOR_HEADS = 12
PARTS = ("encoder", "predictor", "target_encoder")


def strip(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the official ``module.`` and ``backbone.`` prefixes."""
    return {key.removeprefix("module.").removeprefix("backbone."): value for key, value in weights.items()}


def count_blocks(weights: Mapping[str, Tensor], prefix: str) -> int:
    found = {int(m[1]) for key in weights if (m := re.match(rf"{prefix}\.(\d+)\.", key))}
    if not found:
        raise KeyError(f"the official checkpoint has no '{prefix}.N.*' tensors")
    return max(found) + 1


def clip_of_table(tokens: int, tubelet: int, patch: int) -> tuple[int, int]:
    """(frames, pixels) of a square clip whose sin-cos table has ``tokens`` rows: the published clips first
    (16 or 64 frames at 224, 256 or 384 px), else the split with the fewest time steps."""
    splits = [(t * tubelet, round((tokens // t) ** 0.5) * patch) for t in range(1, tokens + 1)
              if tokens % t == 0 and round((tokens // t) ** 0.5) ** 2 == tokens // t]
    if not splits:
        raise ValueError(f"cannot read a square clip from a pos_embed of {tokens} tokens")
    published = [s for s in splits if s[0] in (16, 64) and s[1] in (224, 256, 384)]
    return (published or splits)[0]


def encoder_config(weights: Mapping[str, Tensor], num_heads: int | None = None) -> dict[str, Any]:
    """The `VideoViT` config of an official encoder state dict (prefixes stripped); ``num_heads`` None: the
    official size of that width."""
    if "patch_embed.proj.weight" not in weights:
        raise KeyError("not a V-JEPA video encoder: no 'patch_embed.proj.weight'")
    proj = weights["patch_embed.proj.weight"]
    if proj.ndim != 5:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}: an image ViT, not a video one")
    dim, _, tubelet, patch, _ = proj.shape
    if num_heads is None and int(dim) not in HEADS:
        raise ValueError(f"the official encoder is {dim} wide, not an official size ({sorted(HEADS)}): give "
                         "num_heads (convert_checkpoint.py +num_heads=N)")
    hidden = weights["blocks.0.mlp.fc1.weight"].shape[0]
    use_rope = "pos_embed" not in weights
    frames, size = 16, 256
    if not use_rope:
        frames, size = clip_of_table(int(weights["pos_embed"].shape[1]), int(tubelet), int(patch))
    return {"_target_": "vidssl.encoders.vit_video.VideoViT", "embed_dim": int(dim),
            "depth": count_blocks(weights, "blocks"), "num_heads": num_heads or HEADS[int(dim)],
            "mlp_ratio": hidden / dim,
            "qkv_bias": "blocks.0.attn.qkv.bias" in weights, "img_size": int(size), "num_frames": int(frames),
            "patch_size": int(patch), "tubelet_size": int(tubelet), "use_rope": use_rope, "uniform_power": False,
            "activation_checkpointing": False}


def convert(state: dict[str, Any], *, num_heads: int | None = None, predictor_heads: int = PREDICTOR_HEADS,
            version: int = 1) -> dict[str, Any]:
    """Official V-JEPA checkpoint → ``{"encoder" (the target encoder), "model", "config"}`` of vidssl's `VJEPA`.

    ``num_heads`` / ``predictor_heads``: the attention heads, which the weights do not record (defaults:
    the official size of the encoder's width; 12 for the predictor). ``version`` 1 (facebookresearch/jepa)
    gives mask config j the predictor's mask token j (jepa's ``PredictorMultiMaskWrapper`` passes
    ``mask_index=i``; not checked by a fixture here); 2 (vjepa2) gives every config token 0."""
    missing = [part for part in PARTS if part not in state]
    if missing:
        raise KeyError(f"not a V-JEPA pretraining checkpoint: no {missing} (it holds {sorted(state)[:8]})")
    parts = {part: strip(state[part]) for part in PARTS}
    encoder_cfg = encoder_config(parts["target_encoder"], num_heads)
    predictor = parts["predictor"]
    predictor_dim = int(predictor["predictor_embed.weight"].shape[0])
    mask_tokens = sum(1 for key in predictor if key.startswith("mask_tokens."))
    if mask_tokens == 0:
        raise ValueError("the official predictor has no mask tokens (use_mask_tokens=false), which vidssl's "
                         "predictor always has")
    model = {f"{part}.{key}": value for part in PARTS for key, value in parts[part].items()}
    # the schedules' positions start afresh: a continued run follows its own momentum schedule and masks
    model.update({"ema_step": torch.tensor(0), "mask_step": torch.tensor(0)})
    masks = [{"num_blocks": n, "spatial_scale": [s, s], "aspect_ratio": [0.75, 1.5], "temporal_scale": [1.0, 1.0]}
             for n, s in ((8, 0.15), (2, 0.7))]  # the official two
    if mask_tokens != len(masks):
        raise ValueError(f"the official predictor has {mask_tokens} mask tokens; vidssl's holds one per mask config "
                         f"(the official two): edit the converted config's masks")
    task = {"_target_": "vidssl.tasks.vjepa.VJEPA", "num_frames": encoder_cfg["num_frames"],
            "img_size": encoder_cfg["img_size"], "predictor_dim": predictor_dim,
            "predictor_depth": count_blocks(predictor, "predictor_blocks"), "predictor_heads": predictor_heads,
            "masks": masks, "loss_exp": 1.0, "mask_token_per_config": version == 1,
            # the momentum of the released recipes: V-JEPA 1 vitl16 0.998 -> 1.0, V-JEPA 2 0.99925
            "ema": [0.998, 1.0] if version == 1 else [0.99925, 0.99925]}
    return {"encoder": parts["target_encoder"], "model": model,
            "config": {"encoder": encoder_cfg, "task": {"model": task},
                       "converted_from": {"source": f"vjepa{'' if version == 1 else version}",
                                          "epoch": state.get("epoch")}}}
