"""V-JEPA: predict the latent features of hidden parts of a video (Bardes et al. 2024; Assran et al. 2025, V-JEPA 2).

A clip is tokenised by a video ViT. For each mask config (`vidssl.datasets.masks`), the context encoder
sees only the visible tokens; a narrow predictor receives them (projected to its width, with its own
position encoding) next to one learned mask token at every hidden position, and regresses, at those
positions, the layer-normed outputs of a target encoder that sees the whole clip. The target encoder is
an exponential moving average of the context encoder and gets no gradient. The loss is
``mean(|z - h|^loss_exp) / loss_exp`` per mask config, averaged over the configs (L1 by default).

This computes what `app/vjepa/train.py` of facebookresearch/vjepa2 computes (equivalence fixtures in
tests/fixtures/vjepa/). Two details of the official code are kept as they are: V-JEPA 2's predictor picks
its mask token by the clip-length group, not the mask config, so with one clip length every config uses
mask token 0 (the other tokens exist, as in the official checkpoints, and stay at their initial value;
V-JEPA 1 used one token per config: ``mask_token_per_config=True``); and the momentum schedule is linear
from ``ema[0]`` to ``ema[1]`` over ``ema_horizon`` steps.

State that resumes exactly: the momentum schedule's position (``ema_step``) and the mask counter
(``mask_step``) are buffers, so they travel in the checkpoint; each mask draw uses a generator seeded from
(``mask_seed``, rank, counter), so a resumed run draws the masks the uninterrupted one would have.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidssl import distributed
from vidssl.datasets.masks import OFFICIAL_MASKS, MaskConfig, MultiBlockMasks
from vidssl.encoders.vit_video import (
    Block,
    VideoViT,
    gather_tokens,
    init_vit_weights,
    run_blocks,
    sincos_3d,
    token_positions,
)

log = logging.getLogger(__name__)

__all__ = ["VJEPA", "VJEPAPredictor", "jepa_loss", "feature_std", "rankme"]


def jepa_loss(predictions: Sequence[Tensor], targets: Sequence[Tensor], loss_exp: float = 1.0) -> Tensor:
    """Mean over mask configs of mean(|z - h|^loss_exp) / loss_exp.

    Inputs: predictions and targets, one B×M_i×D pair per mask config. Outputs: a scalar.
    """
    if len(predictions) != len(targets) or not predictions:
        raise ValueError(f"jepa_loss needs one target per prediction, got {len(predictions)} and {len(targets)}")
    terms = [torch.mean(torch.abs(z - h) ** loss_exp) / loss_exp for z, h in zip(predictions, targets)]
    return sum(terms) / len(terms)


@torch.no_grad()
def feature_std(features: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension standard deviation. Inputs: N×D. Outputs: a scalar."""
    return features.float().std(dim=0).mean()


@torch.no_grad()
def rankme(features: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of N×D features;
    between 1 (collapsed to one direction) and min(N, D). Outputs: a scalar."""
    s = torch.linalg.svdvals(features.float())
    p = s / (s.sum() + eps) + eps
    return torch.exp(-(p * p.log()).sum())


def warmup_cosine_lr(step: int, *, start_lr: float, ref_lr: float, final_lr: float, warmup_steps: int,
                     total_steps: int) -> float:
    """The official ``WarmupCosineSchedule`` after ``step`` (1-based) calls: linear from ``start_lr`` to
    ``ref_lr`` over ``warmup_steps``, then a half cosine to ``final_lr`` at ``total_steps`` (never below it)."""
    if step < warmup_steps:
        return start_lr + step / max(1, warmup_steps) * (ref_lr - start_lr)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(final_lr, final_lr + (ref_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def cosine_weight_decay(step: int, *, ref_wd: float, final_wd: float, total_steps: int) -> float:
    """The official ``CosineWDSchedule`` after ``step`` (1-based) calls: a half cosine from ``ref_wd`` to
    ``final_wd`` at ``total_steps``, held there after."""
    wd = final_wd + (ref_wd - final_wd) * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return max(final_wd, wd) if final_wd <= ref_wd else min(final_wd, wd)


def mask_generator(mask_seed: int, rank: int, counter: int) -> torch.Generator:
    """The generator of batch ``counter``'s mask positions on ``rank``."""
    return torch.Generator().manual_seed(hash((mask_seed, rank, counter)) % 2**63)


class VJEPAPredictor(nn.Module):
    """V-JEPA's predictor (`src/models/predictor.py`), parameter names as the official ones.

    Context tokens (width ``embed_dim``) are projected to ``predictor_dim`` and given the predictor's own
    sin-cos positions (or rotary ones); each target position gets a learned mask token plus its position;
    the union, sorted by position, goes through ``depth`` blocks; the outputs at the target positions are
    normed and projected back to ``embed_dim``.

    Inputs: context B×K×embed_dim, context_index B×K, target_index B×M (token indices on ``grid``).
    Outputs: B×M×embed_dim.
    """

    def __init__(self, *, embed_dim: int, predictor_dim: int = 384, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, grid: Sequence[int] = (8, 16, 16), num_mask_tokens: int = 2,
                 use_rope: bool = False, uniform_power: bool = False, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.num_patches = math.prod(self.grid)
        self.use_rope = use_rope
        self.activation_checkpointing = activation_checkpointing
        with torch.device("meta"):  # allocated once below, then initialised as the official predictor
            self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
            self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, predictor_dim))
                                                for _ in range(num_mask_tokens))
            self.predictor_blocks = nn.ModuleList(Block(predictor_dim, num_heads, mlp_ratio=mlp_ratio,
                                                        rope=use_rope) for _ in range(depth))
            self.predictor_norm = nn.LayerNorm(predictor_dim, eps=1e-6)
            self.predictor_proj = nn.Linear(predictor_dim, embed_dim)
        self.to_empty(device="cpu")
        init_vit_weights(self, self.predictor_blocks)
        for token in self.mask_tokens:  # zero_init_mask_tokens
            nn.init.zeros_(token)
        if use_rope:
            self.predictor_pos_embed = None
        else:
            table = sincos_3d(predictor_dim, *self.grid, uniform_power=uniform_power).float()
            self.register_buffer("predictor_pos_embed", table.unsqueeze(0))

    def forward(self, context: Tensor, context_index: Tensor, target_index: Tensor, mask_index: int = 0) -> Tensor:
        b, k = context_index.shape
        x = self.predictor_embed(context)
        targets = self.mask_tokens[mask_index % len(self.mask_tokens)].expand(b, target_index.shape[1], -1)
        if self.predictor_pos_embed is not None:
            table = self.predictor_pos_embed.expand(b, -1, -1)
            x = x + gather_tokens(table, context_index)
            targets = targets + gather_tokens(table, target_index)
        x = torch.cat([x, targets], dim=1)
        index = torch.cat([context_index, target_index], dim=1)
        order = torch.argsort(index, dim=1)
        x = gather_tokens(x, order)
        axes = token_positions(torch.gather(index, 1, order).unsqueeze(1), *self.grid[1:]) if self.use_rope else None
        x = self.predictor_norm(run_blocks(self.predictor_blocks, x, axes, self.activation_checkpointing))
        x = gather_tokens(x, torch.argsort(order, dim=1))[:, k:]
        return self.predictor_proj(x)


class VJEPA(nn.Module):
    """V-JEPA pretraining: masked context encoder + predictor regress an EMA target's layer-normed tokens.

    Args:
        encoder: a `VideoViT` (the context encoder; its copy becomes the target encoder).
        num_frames, img_size: the training clip (sets the token grid of the masks and the predictor).
        predictor_dim, predictor_depth, predictor_heads: the predictor's width, depth and heads
            (official: 384, 12, 12).
        masks: the mask configs (`MaskConfig` or dicts of its fields); default the official two.
        loss_exp: exponent of the loss (1: L1).
        ema: (start, end) momentum of the target encoder, linear over ``ema_horizon`` steps.
        ema_horizon: steps of the momentum schedule; None: 1.25 × the run's max_steps (the official
            ipe_scale of 1.25 stretches every schedule past the last epoch).
        mask_seed: seed of the mask positions.
        monitor: log the target tokens' per-dimension std (``target_std``) and RankMe (``target_rankme``).
        monitor_every: compute them every this many training forward calls (set it to trainer.log_every;
            between, the last values are returned): an SVD per step costs ~10 % of a tiny model's step.
        collapse_rank: warn once when RankMe falls below this fraction of min(tokens, width).
        collapse_std: warn once when the per-dimension std falls below this.
        mask_token_per_config: the predictor's mask token j for mask config j (V-JEPA 1,
            facebookresearch/jepa); False: token 0 for every config (V-JEPA 2).
        schedule: the official learning-rate and weight-decay schedules, replacing the trainer's warmup +
            cosine (``optimizer_schedule``): ``{"start_lr", "final_lr", "warmup_steps", "final_wd"}`` and
            ``"ipe_scale"`` (default 1.25: the schedules end at 1.25 × max_steps) or ``"total_steps"``; the
            peak lr and the first weight decay are the optimiser's. None: the trainer's schedule.

    Inputs: batch["video"] B×3×T×H×W; optionally batch["masks"]: a list of (context B×K, target B×M)
    index pairs, one per mask config, replacing the drawn masks (tests, replays).
    Outputs: {"loss", "momentum", "context_tokens", "target_std", "target_rankme"}.
    """

    def __init__(self, *, encoder: VideoViT, num_frames: int = 16, img_size: int = 224, predictor_dim: int = 384,
                 predictor_depth: int = 12, predictor_heads: int = 12, masks: Sequence[Any] | None = None,
                 loss_exp: float = 1.0, ema: Sequence[float] = (0.998, 1.0), ema_horizon: int | None = None,
                 mask_seed: int = 0, monitor: bool = True, monitor_every: int = 10, collapse_rank: float = 0.05,
                 collapse_std: float = 0.05, mask_token_per_config: bool = False,
                 schedule: dict[str, float] | None = None) -> None:
        super().__init__()
        if not isinstance(encoder, VideoViT):
            raise TypeError(f"VJEPA needs a VideoViT encoder (encoder=vit_video_*), got {type(encoder).__name__}")
        if loss_exp <= 0:
            raise ValueError(f"VJEPA: loss_exp must be > 0, got {loss_exp}")
        if len(ema) != 2 or not all(0.0 <= m <= 1.0 for m in ema):
            raise ValueError(f"VJEPA: ema must be (start, end) momenta in [0, 1], got {ema}")
        configs = [m if isinstance(m, MaskConfig) else MaskConfig(**{k: tuple(v) if isinstance(v, Sequence) else v
                                                                     for k, v in dict(m).items()})
                   for m in (OFFICIAL_MASKS if masks is None else masks)]
        if not configs:
            raise ValueError("VJEPA: masks must hold at least one mask config")
        self.encoder = encoder
        self.grid = (num_frames // encoder.tubelet_size, img_size // encoder.patch_size,
                     img_size // encoder.patch_size)
        self.predictor = VJEPAPredictor(embed_dim=encoder.embed_dim, predictor_dim=predictor_dim,
                                        depth=predictor_depth, num_heads=predictor_heads, grid=self.grid,
                                        num_mask_tokens=len(configs), use_rope=encoder.use_rope,
                                        uniform_power=encoder.uniform_power,
                                        activation_checkpointing=encoder.activation_checkpointing)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.mask_generators = [MultiBlockMasks(c, self.grid) for c in configs]
        self.loss_exp = loss_exp
        self.ema = (float(ema[0]), float(ema[1]))
        self.ema_horizon = ema_horizon
        self.mask_seed = mask_seed
        self.monitor = monitor
        self.mask_token_per_config = mask_token_per_config
        if schedule is not None:
            missing = {"start_lr", "final_lr", "warmup_steps", "final_wd"} - set(schedule)
            if missing:
                raise ValueError(f"VJEPA: schedule needs {sorted(missing)} (got {sorted(schedule)})")
        self.schedule = dict(schedule) if schedule is not None else None
        self.monitor_every = max(1, monitor_every)
        self._health: dict[str, Tensor] = {}
        self.collapse_rank = collapse_rank
        self.collapse_std = collapse_std
        self._warned = False
        self._max_steps: int | None = None  # the run's length, known from the first on_train_step_end
        # Buffers: they travel in the checkpoint, so the schedules resume where they stopped.
        self.register_buffer("ema_step", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("mask_step", torch.tensor(0, dtype=torch.int64))

    @property
    def eval_encoder(self) -> VideoViT:
        """What the checkpoint's ``encoder`` holds: the EMA target, which the official evaluations read."""
        return self.target_encoder

    def draw_masks(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """Every mask config's (context, target) indices for the next batch; advances the mask counter."""
        counter = int(self.mask_step)
        generator = mask_generator(self.mask_seed, distributed.rank(), counter)
        masks = [m(batch_size, counter=counter, generator=generator) for m in self.mask_generators]
        self.mask_step += 1
        return masks

    @torch.no_grad()
    def targets(self, video: Tensor) -> Tensor:
        """The target encoder's tokens, layer-normed without affine parameters: B×N×D."""
        h = self.target_encoder.tokens(video)
        return F.layer_norm(h, (h.shape[-1],))

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        video = batch["video"]
        grid = self.encoder.token_grid(video)
        if grid != self.grid:
            raise ValueError(f"VJEPA: batch['video'] {tuple(video.shape)} is a {grid} token grid, the masks and the "
                             f"predictor are built for {self.grid} (set num_frames and img_size to the data's clip)")
        masks = batch.get("masks")
        if masks is None:
            masks = self.draw_masks(video.shape[0])
        masks = [(c.to(video.device), t.to(video.device)) for c, t in masks]
        h = self.targets(video)
        # every context first, then every prediction, as the official step orders them: the backward pass
        # then frees the activations in an order that peaks 8 MB (10 %) lower at the benchmark's size
        contexts = [self.encoder.tokens(video, context_index) for context_index, _ in masks]
        predictions, targets = [], []
        for j, (z, (context_index, target_index)) in enumerate(zip(contexts, masks)):
            token = j if self.mask_token_per_config else 0
            predictions.append(self.predictor(z, context_index, target_index, mask_index=token))
            targets.append(gather_tokens(h, target_index))
        loss = jepa_loss(predictions, targets, self.loss_exp)
        out = {"loss": loss, "momentum": torch.tensor(self.momentum(self._max_steps), device=video.device),
               "context_tokens": torch.tensor(float(sum(c.shape[1] for c, _ in masks)) / len(masks),
                                              device=video.device)}
        if self.monitor:
            # mask_step counts the training batches (a buffer: resumed runs keep the same logging steps)
            if not self._health or not self.training or int(self.mask_step) % self.monitor_every == 0:
                self._health = self.health(h)
            out.update({k: v.to(video.device) for k, v in self._health.items()})
        return out

    @torch.no_grad()
    def health(self, h: Tensor, max_rows: int = 4096) -> dict[str, Tensor]:
        """Per-dimension std and RankMe of the target tokens (at most ``max_rows`` of them, evenly spaced);
        warns once when either signals collapse."""
        if not self.monitor:
            return {}
        rows = h.reshape(-1, h.shape[-1])
        if rows.shape[0] > max_rows:
            rows = rows[torch.linspace(0, rows.shape[0] - 1, max_rows, device=rows.device).long()]
        std, rank = feature_std(rows), rankme(rows)
        if not self._warned and (float(rank) < self.collapse_rank * min(rows.shape) or float(std) < self.collapse_std):
            self._warned = True
            log.warning("V-JEPA target features look collapsed: RankMe %.2f of at most %d, per-dimension std %.4g "
                        "(warned once; thresholds collapse_rank=%g, collapse_std=%g)", float(rank), min(rows.shape),
                        float(std), self.collapse_rank, self.collapse_std)
        return {"target_std": std, "target_rankme": rank}

    def momentum(self, max_steps: int | None = None) -> float:
        """The target's momentum at the current schedule position (``ema_step``)."""
        horizon = self.ema_horizon or int(1.25 * (max_steps or 1))
        i = int(self.ema_step)
        return self.ema[0] + i * (self.ema[1] - self.ema[0]) / max(horizon, 1)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · encoder, over every parameter."""
        target = list(self.target_encoder.parameters())
        online = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_mul_(target, momentum)
        torch._foreach_add_(target, online, alpha=1 - momentum)

    def optimizer_schedule(self, step: int, max_steps: int, groups: list[dict[str, Any]]) -> None:
        """Set every group's lr and weight decay for step ``step`` (0-based) as the official schedulers do
        (`warmup_cosine_lr`, `cosine_weight_decay`); groups without weight decay keep none. A function of
        the step and of the group's ``initial_lr``/``initial_weight_decay`` (saved with the optimiser), so a
        resumed run continues it exactly."""
        if self.schedule is None:
            return
        s = self.schedule
        total = int(s.get("total_steps") or s.get("ipe_scale", 1.25) * max_steps)
        for group in groups:
            group["lr"] = warmup_cosine_lr(step + 1, start_lr=s["start_lr"], ref_lr=group["initial_lr"],
                                           final_lr=s["final_lr"], warmup_steps=int(s["warmup_steps"]),
                                           total_steps=total)
            ref_wd = group.setdefault("initial_weight_decay", group["weight_decay"])
            group["weight_decay"] = 0.0 if ref_wd == 0 else cosine_weight_decay(
                step + 1, ref_wd=ref_wd, final_wd=s["final_wd"], total_steps=total)

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        self._max_steps = max_steps
        self.update_target(self.momentum(max_steps))
        self.ema_step += 1
