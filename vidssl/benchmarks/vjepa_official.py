"""The authors' V-JEPA training step (facebookresearch/vjepa2 `app/vjepa/train.py`), for `suite=train task=vjepa*
official=DIR`: their encoder and predictor (with their multi-clip wrappers) built with the task config's shape,
imported from the checkout at run time, on the same batch and masks as vidssl's row.

The step is train.py's: the target's tokens layer-normed, the context encoder and the predictor per mask
config, the loss, backward, AdamW (their parameter groups), the EMA of the target. Each step draws the masks
vidssl's row draws at the same step (same counter and generator: the official collator's draws, see
`vidssl.datasets.masks`), so both rows see the same numbers of context and target tokens; the drawing is
timed in both rows (the official loader does it in its workers).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidssl.train.step import PRECISIONS


def official_step(cfg: Any, checkout: Path, video: Tensor, device: torch.device, precision: str,
                  momentum: float = 0.999) -> Callable[[], None]:
    """A closure running one official training step on ``video`` (B×3×T×H×W, already on ``device``)."""
    if not (checkout / "src" / "models" / "predictor.py").is_file():
        raise FileNotFoundError(f"official={checkout}: not a checkout of facebookresearch/vjepa2")
    sys.path.insert(0, str(checkout))
    from src.masks.utils import apply_masks
    from src.models.predictor import VisionTransformerPredictor
    from src.models.vision_transformer import VisionTransformer
    from src.utils.wrappers import MultiSeqWrapper, PredictorMultiSeqWrapper

    from vidssl.datasets.masks import MaskConfig, MultiBlockMasks

    e, m = cfg.encoder, cfg.task.model
    frames, size = m.num_frames, m.img_size
    ln = partial(nn.LayerNorm, eps=1e-6)
    encoder = MultiSeqWrapper(VisionTransformer(
        img_size=size, patch_size=e.patch_size, num_frames=frames, tubelet_size=e.tubelet_size,
        embed_dim=e.embed_dim, depth=e.depth, num_heads=e.num_heads, mlp_ratio=e.mlp_ratio, qkv_bias=e.qkv_bias,
        norm_layer=ln, use_rope=e.use_rope, uniform_power=e.uniform_power, use_sdpa=True,
        use_activation_checkpointing=e.activation_checkpointing))
    from omegaconf import OmegaConf

    masks_cfg = [{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()}
                 for c in OmegaConf.to_container(m.masks)]
    predictor = PredictorMultiSeqWrapper(VisionTransformerPredictor(
        img_size=size, patch_size=e.patch_size, num_frames=frames, tubelet_size=e.tubelet_size,
        embed_dim=e.embed_dim, predictor_embed_dim=m.predictor_dim, depth=m.predictor_depth,
        num_heads=m.predictor_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=ln, use_mask_tokens=True,
        num_mask_tokens=len(masks_cfg), zero_init_mask_tokens=True, use_rope=e.use_rope,
        uniform_power=e.uniform_power, use_sdpa=True, use_activation_checkpointing=e.activation_checkpointing))
    encoder.to(device).train()
    predictor.to(device).train()
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad = False
    groups = [{"params": [p for n, p in mod.named_parameters() if "bias" not in n and p.ndim != 1]}
              for mod in (encoder, predictor)]
    groups += [{"params": [p for n, p in mod.named_parameters() if "bias" in n or p.ndim == 1], "weight_decay": 0}
               for mod in (encoder, predictor)]
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    grid = (frames // e.tubelet_size, size // e.patch_size, size // e.patch_size)
    from vidssl.tasks.vjepa import mask_generator

    generators = [MultiBlockMasks(MaskConfig(**c), grid) for c in masks_cfg]
    counter = [0]

    def draw() -> tuple[list, list]:
        g = mask_generator(int(m.mask_seed), 0, counter[0])
        drawn = [masks(video.shape[0], counter=counter[0], generator=g) for masks in generators]
        counter[0] += 1
        return [[c.to(device) for c, _ in drawn]], [[t.to(device) for _, t in drawn]]

    clips = [video]
    dtype = PRECISIONS[precision]
    loss_exp = float(m.loss_exp)

    def step() -> None:
        masks_enc, masks_pred = draw()
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            with torch.no_grad():
                h = [F.layer_norm(hi, (hi.size(-1),)) for hi in target(clips)]
            z = predictor(encoder(clips, masks_enc), masks_enc, masks_pred)
            hm = [apply_masks(hi, mi, concat=False) for hi, mi in zip(h, masks_pred)]
            loss, n = 0, 0
            for zi, hi in zip(z, hm):
                for zij, hij in zip(zi, hi):
                    loss += torch.mean(torch.abs(zij - hij) ** loss_exp) / loss_exp
                    n += 1
            loss = loss / n
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            params_k, params_q = list(target.parameters()), list(encoder.parameters())
            torch._foreach_mul_(params_k, momentum)
            torch._foreach_add_(params_k, params_q, alpha=1 - momentum)

    return step
