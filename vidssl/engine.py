"""The one training loop every method shares.

A task is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, ...diagnostics}``, with
an ``encoder`` attribute and optionally ``on_train_step_end(step, max_steps)`` (momentum updates, queue
refresh) and ``on_train_step_start(step, max_steps, make_loader)`` (before each step; ``make_loader(**kw)``
is a ``DataLoader`` over the training dataset with the trainer's collate, workers and batch size, any of
them overridable: SeLaVi's passes over the whole dataset to relabel it). ``Trainer.fit`` does the rest: optimiser, per-step cosine LR schedule with warmup, bf16/fp16
autocast, gradient clipping and accumulation, DDP, atomic checkpoints with exact resume, TensorBoard
scalars and a progress bar.

Resume: if ``out_dir/checkpoints/last.pt`` exists, ``fit`` continues from it — model, optimiser, scaler,
every RNG of every rank, the step, and the sampler's (epoch, position). Each sample's randomness lives
in the dataset, seeded by (seed, epoch, index) (``set_epoch`` is called when the dataset has it), so the
run continues mid-epoch without reading any batch twice, and with any number of loader workers. A rerun
whose ``encoder`` or ``task.model`` config differs from the checkpoint's is refused, naming the keys: weights
of the same shapes would otherwise load into a different model without complaint.

Distributed: launched by torchrun, ``fit`` joins the process group (NCCL on CUDA, gloo on CPU), wraps
the task in DDP, shards every global batch by rank (``vidssl.samplers``) and leaves logging and
checkpoints to rank 0. ``trainer.batch_size`` is per process: the global batch is
``batch_size × world_size × accumulate``. One machine::

    torchrun --nproc_per_node=2 tools/pretrain.py task=simclr dataset=synthetic dataset.root=DIR ...

Several machines (run the same line on each; any free port on the first node)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-id=myrun \\
        --rdzv-endpoint=NODE0_HOST:29400 tools/pretrain.py task=... trainer.out_dir=SHARED/RUN

``trainer.out_dir`` must then be on a filesystem every node sees, so a restart finds ``last.pt``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vidssl import distributed
from vidssl.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    prune_step_checkpoints,
    rng_state,
    serialize,
    set_rng_state,
    step_path,
)
from vidssl.samplers import ResumableBatchSampler

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module, int, SummaryWriter | None], dict[str, float]]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``: call it before building the model."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_schedule(*, max_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> list[float]:
    """The LR multiplier of every optimiser step, computed once up front (as dino's cosine_scheduler).

    Linear warmup from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps (never 0: a step at lr 0 is
    wasted), then a half cosine from 1 down to ``min_ratio`` at the last step.
    Outputs: a list of ``max_steps`` floats.
    """
    warmup_steps = min(warmup_steps, max_steps)
    factors = [(i + 1) / warmup_steps for i in range(warmup_steps)]
    decay_steps = max_steps - warmup_steps
    for i in range(decay_steps):
        progress = i / max(1, decay_steps - 1)
        factors.append(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return factors


def move_batch(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Tensors to ``device`` (floating 4-D/5-D ones channels-last if asked); other fields pass through."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.is_floating_point() and value.ndim in (4, 5):
                value = value.contiguous(memory_format=_memory_format(value.ndim))
        moved[key] = value
    return moved


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convolution weights channels-last (3-D convs ``channels_last_3d``), so cuDNN skips transposes.

    ``Module.to(memory_format=...)`` takes one format for every weight and fails on models mixing 2-D
    and 3-D convolutions (a video and an audio encoder), hence the per-parameter choice.
    """
    for param in module.parameters():
        if param.ndim in (4, 5):
            param.data = param.data.contiguous(memory_format=_memory_format(param.ndim))
    return module


# The config sections that define the model: a resumed run must match them. Everything else (max_steps,
# out_dir, the data and its augmentation, logging) may change between a run and its continuation.
MODEL_SECTIONS = ("encoder", "task.model")


def model_config_changes(saved: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Dotted keys under MODEL_SECTIONS whose values differ between two run configs (sorted).

    A section missing from either config (or a missing config) is not compared.
    """
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}.{key}").items()}

    def find(config: dict[str, Any] | None, path: str) -> Any:
        for key in path.split("."):
            if not isinstance(config, dict) or key not in config:
                return None
            config = config[key]
        return config

    changes = []
    for section in MODEL_SECTIONS:
        before, after = find(saved, section), find(new, section)
        if before is None or after is None:
            continue
        old, now = flat(before, section), flat(after, section)
        changes += [k for k in old.keys() | now.keys() if old.get(k, "<absent>") != now.get(k, "<absent>")]
    return sorted(changes)


def _join_process_group() -> tuple[int, bool]:
    """Join torchrun's process group when launched by it; returns (local_rank, whether we joined it)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or distributed.is_dist():
        return local_rank, False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return local_rank, True


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop reads after each step (so it can save and exit)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        # A second Ctrl-C falls through to the old handler: a way out if saving hangs.
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> _StopRequest:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Trains a task on a dataset; everything the loop does is an explicit argument.

    Args:
        max_steps: optimiser steps to train for (each takes ``accumulate`` batches).
        batch_size: samples per batch in each process.
        out_dir: the run directory (checkpoints, TensorBoard events, config.yaml); reusing it resumes.
        num_workers: DataLoader worker processes.
        checkpoint_every: write ``step_<step, 7 digits>.pt`` + ``last.pt`` every this many steps (and at the end).
        keep_last: how many ``step_*.pt`` files to keep (``last.pt`` and ``best.pt`` always stay).
        log_every: TensorBoard/progress update period in steps.
        seed: seed of the batch order and of the training RNG (rank r draws from seed + r).
        precision: "fp32", "bf16" (autocast, CPU or CUDA) or "fp16" (autocast + gradient scaling, CUDA).
        grad_clip: clip the global gradient norm to this; 0 disables.
        accumulate: batches whose gradients are summed into one optimiser step.
        warmup_steps: linear LR warmup steps before the cosine decay.
        min_lr_ratio: the final LR as a fraction of the base LR.
        channels_last: channels-last weights and inputs (faster convolutions on recent GPUs).
        eval_every: call ``evaluator`` every this many steps (0: never).
        evaluator: ``(task, step, writer) -> {metric: value}``, on rank 0, with the task in eval mode.
        best_metric: what ``best.pt`` is best at: "loss" (the smoothed training loss) or a metric key of
            the evaluator.
        best_mode: "min" or "max": whether a lower or a higher ``best_metric`` is better.
        progress: show a progress bar (rank 0); otherwise log a line every ``log_every`` steps.
        device: "auto" (CUDA if present, one GPU per local rank), "cpu" or "cuda".
        find_unused_parameters: passed to DDP, for tasks whose step leaves some parameters unused.
    """

    def __init__(
        self,
        *,
        max_steps: int,
        batch_size: int,
        out_dir: str | Path,
        num_workers: int = 2,
        checkpoint_every: int = 500,
        keep_last: int = 2,
        log_every: int = 10,
        seed: int = 0,
        precision: str = "fp32",
        grad_clip: float = 0.0,
        accumulate: int = 1,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        channels_last: bool = False,
        eval_every: int = 0,
        evaluator: Evaluator | None = None,
        best_metric: str = "loss",
        best_mode: str = "min",
        progress: bool = True,
        device: str = "auto",
        find_unused_parameters: bool = False,
    ) -> None:
        positive = {"max_steps": max_steps, "batch_size": batch_size, "checkpoint_every": checkpoint_every,
                    "log_every": log_every, "accumulate": accumulate}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {value}")
        for name, value in {"num_workers": num_workers, "keep_last": keep_last, "warmup_steps": warmup_steps,
                            "eval_every": eval_every, "grad_clip": grad_clip}.items():
            if value < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {value}")
        if precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"trainer.best_mode must be 'min' or 'max', got {best_mode!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"trainer.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if best_metric != "loss" and evaluator is None:
            raise ValueError(f"trainer.best_metric={best_metric!r} needs an evaluator that reports it")
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.out_dir = Path(out_dir)
        self.num_workers = num_workers
        self.checkpoint_every = checkpoint_every
        self.keep_last = keep_last
        self.log_every = log_every
        self.seed = seed
        self.precision = precision
        self.grad_clip = grad_clip
        self.accumulate = accumulate
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.channels_last = channels_last
        self.eval_every = eval_every
        self.evaluator = evaluator
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.progress = progress
        self.device = device
        self.find_unused_parameters = find_unused_parameters

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def fit(
        self,
        task: nn.Module,
        dataset: Dataset,
        optimizer_factory: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        *,
        config: dict[str, Any] | None = None,
        collate_fn: Callable[[Sequence[Any]], Any] = default_collate,
    ) -> dict[str, Any]:
        """Train ``task`` for ``max_steps`` steps (or resume a run in ``out_dir`` and finish it).

        Args:
            task: the method (``forward(batch) -> {"loss", ...}``, ``encoder``).
            dataset: map-style dataset of sample dicts (``set_epoch`` is called if it exists).
            optimizer_factory: trainable parameters → optimiser (a Hydra partial of AdamW/SGD).
            config: the resolved run config, stored in every checkpoint and as ``config.yaml``.
            collate_fn: list of samples → batch.
        Outputs:
            {"step", "loss" (smoothed), "best", "interrupted", "checkpoint"}.
        Raises:
            FloatingPointError: the loss became NaN/inf; nothing is saved for that step.
        """
        local_rank, joined = _join_process_group()
        try:
            return self._fit(task, dataset, optimizer_factory, config, collate_fn, local_rank)
        finally:
            if joined:
                dist.destroy_process_group()

    def _fit(self, task, dataset, optimizer_factory, config, collate_fn, local_rank) -> dict[str, Any]:
        rank, world = distributed.rank(), distributed.world_size()
        is_main = rank == 0
        if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()):
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError("trainer.precision=fp16 needs a GPU; use bf16 on the CPU")
        amp_dtype = PRECISIONS[self.precision]

        # ---- model and optimiser -------------------------------------------------------------------
        task.to(device)
        if self.channels_last:
            to_channels_last(task)
        optimizer = optimizer_factory([p for p in task.parameters() if p.requires_grad])
        for group in optimizer.param_groups:
            # The schedule multiplies the base LR; keep it in the group so it travels with the state.
            group.setdefault("initial_lr", group["lr"])
        lr_factors = cosine_schedule(max_steps=self.max_steps, warmup_steps=self.warmup_steps,
                                     min_ratio=self.min_lr_ratio)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        model: nn.Module = task
        if world > 1:
            model = DistributedDataParallel(task, device_ids=[local_rank] if device.type == "cuda" else None,
                                            find_unused_parameters=self.find_unused_parameters)

        # ---- resume from last.pt, or start fresh ---------------------------------------------------
        sampler = ResumableBatchSampler(size=len(dataset), batch_size=self.batch_size, seed=self.seed,
                                        rank=rank, world_size=world)
        global_batch = self.batch_size * world  # samples one batch takes from the epoch
        step, epoch, position = 0, 0, 0
        best = {"metric": self.best_metric, "value": None}
        smoothed_loss: float | None = None
        last = self.checkpoint_dir / "last.pt"
        if last.exists():
            state = load_checkpoint(last)
            # Weights of the same shapes load into a different model (another padding, temperature,
            # …) without complaint, so the configs are compared as well.
            changed = model_config_changes(state.get("config"), config)
            if changed:
                raise ValueError(f"{last} was trained with a different model config ({', '.join(changed)}); "
                                 "resume with the same task and encoder settings, or start a new trainer.out_dir")
            try:
                task.load_state_dict(state["model"])
            except RuntimeError as err:
                raise RuntimeError(f"{last} holds a different model than this run's config: {err}") from err
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            step = state["step"]
            epoch = state["sampler"]["epoch"]
            consumed = state["sampler"]["position"]  # samples of this epoch already trained on
            if consumed % global_batch:
                raise ValueError(f"{last}: {consumed} samples into the epoch is not a whole number of "
                                 f"batches of {global_batch}; resume with the batch size and process count "
                                 f"it was saved with")
            position = consumed // global_batch
            # Each rank continues its own random stream (a different world size reuses them cyclically).
            set_rng_state(state["rng"][rank % len(state["rng"])])
            best = state["best"]
            smoothed_loss = state.get("smoothed_loss")
            if is_main:
                log.info("resuming from %s at step %d (epoch %d, batch %d)", last, step, epoch, position)
        else:
            seed_everything(self.seed + rank)
        if step >= self.max_steps:
            return {"step": step, "loss": smoothed_loss, "best": best, "interrupted": False,
                    "checkpoint": str(last)}

        def save(*, also_best: bool) -> None:
            # Every rank's RNG state goes into the checkpoint, so the all-gather runs on every rank.
            rngs = [rng_state()]
            if world > 1:
                rngs = [None] * world
                dist.all_gather_object(rngs, rng_state())
            if not is_main:
                return
            data = serialize({
                "model": task.state_dict(),
                "encoder": task.encoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"kind": "cosine", "max_steps": self.max_steps, "warmup_steps": self.warmup_steps,
                              "min_lr_ratio": self.min_lr_ratio},
                "scaler": scaler.state_dict(),
                "step": step,
                "rng": rngs,
                "sampler": {"epoch": epoch, "position": position * global_batch},
                "best": best,
                "smoothed_loss": smoothed_loss,
                "config": config,
            })
            if self.keep_last > 0:
                atomic_write_bytes(step_path(self.checkpoint_dir, step), data)
                prune_step_checkpoints(self.checkpoint_dir, self.keep_last)
            if also_best:
                atomic_write_bytes(self.checkpoint_dir / "best.pt", data)
            atomic_write_bytes(last, data)  # last: whoever resumes trusts it to be complete

        def improves(value: float) -> bool:
            if best["value"] is None:
                return True
            return value < best["value"] if self.best_mode == "min" else value > best["value"]

        writer = SummaryWriter(str(self.out_dir)) if is_main else None
        if is_main and config is not None:
            from omegaconf import OmegaConf

            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)).encode())

        def batches() -> Iterator[dict[str, Any]]:
            """Batches forever, epoch after epoch, from the current (epoch, position) on."""
            nonlocal epoch, position
            while True:
                sampler.set_state(epoch, position)
                set_epoch = getattr(dataset, "set_epoch", None)
                if set_epoch is not None:
                    set_epoch(epoch)  # before the workers fork, so they copy the new epoch
                # An explicit generator: the DataLoader would otherwise draw its worker seed from the
                # global RNG, and a resumed run (which starts a loader mid-epoch) would drift from it.
                loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                    collate_fn=collate_fn, pin_memory=device.type == "cuda",
                                    generator=torch.Generator().manual_seed(self.seed + epoch))
                for batch in loader:
                    position += 1
                    yield batch
                epoch, position = epoch + 1, 0

        # ---- the loop --------------------------------------------------------------------------------
        step_start = getattr(task, "on_train_step_start", None)
        make_loader = functools.partial(DataLoader, dataset, batch_size=self.batch_size, collate_fn=collate_fn,
                                        num_workers=self.num_workers, pin_memory=device.type == "cuda")
        data = batches()
        bar = tqdm(total=self.max_steps, initial=step, disable=not (self.progress and is_main),
                   dynamic_ncols=True, unit="step")
        interrupted = False
        log_keys: list[str] | None = None
        clips_since_log, time_of_log = 0, time.perf_counter()
        try:
            with _StopRequest() as stop:
                while step < self.max_steps:
                    if step_start is not None:
                        step_start(step, self.max_steps, make_loader)
                    lr_factor = lr_factors[step]
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * lr_factor

                    # Forward/backward `accumulate` batches; DDP syncs gradients only on the last one.
                    totals: dict[str, torch.Tensor] = {}
                    skipped = 0
                    for micro in range(self.accumulate):
                        batch = next(data)
                        skipped += int(batch["skipped"].sum()) if "skipped" in batch else 0
                        batch = move_batch(batch, device, self.channels_last)
                        last_micro = micro == self.accumulate - 1
                        sync = nullcontext() if world == 1 or last_micro else model.no_sync()
                        with sync:
                            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                                out = model(batch)
                            scaler.scale(out["loss"] / self.accumulate).backward()
                        for key, value in out.items():
                            value = torch.as_tensor(value, device=device).detach().float()
                            totals[key] = totals.get(key, 0) + value / self.accumulate
                    if log_keys is None:
                        log_keys = sorted(totals)

                    # One small all-reduce per step: the mean diagnostics over ranks, and whether any rank
                    # was asked to stop, so that all ranks stop (and save) at the same step.
                    packed = torch.stack([totals[k] for k in log_keys]
                                         + [torch.tensor(float(stop.requested), device=device)])
                    packed = distributed.all_reduce_sum(packed) / world
                    values = dict(zip(log_keys, packed[:-1].tolist()))
                    stop_now = bool(packed[-1] > 0)
                    if not math.isfinite(values["loss"]):
                        raise FloatingPointError(
                            f"non-finite loss ({values['loss']}) at step {step + 1}; the step was not applied "
                            f"and the last good checkpoint in {self.checkpoint_dir} is left as it was")

                    if self.grad_clip > 0:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                        grad_norm = nn.utils.clip_grad_norm_(task.parameters(), self.grad_clip)
                        values["grad_norm"] = float(grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    hook = getattr(task, "on_train_step_end", None)
                    if hook is not None:
                        hook(step, self.max_steps)

                    # ---- logging ---------------------------------------------------------------------
                    smoothed_loss = values["loss"] if smoothed_loss is None else (
                        0.9 * smoothed_loss + 0.1 * values["loss"])
                    clips_since_log += self.batch_size * self.accumulate * world
                    bar.update(1)
                    if step % self.log_every == 0 or step == self.max_steps:
                        now = time.perf_counter()
                        clips_per_sec = clips_since_log / max(now - time_of_log, 1e-9)
                        clips_since_log, time_of_log = 0, now
                        if writer is not None:
                            for key, value in values.items():
                                writer.add_scalar(f"train/{key}", value, step)
                            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                            writer.add_scalar("train/clips_per_sec", clips_per_sec, step)
                            writer.add_scalar("train/epoch", epoch, step)
                            if skipped:
                                writer.add_scalar("train/skipped_videos", skipped, step)
                        bar.set_postfix(loss=f"{values['loss']:.4f}", clips_s=f"{clips_per_sec:.1f}")
                        if is_main and not self.progress:
                            log.info("step %d/%d loss %.4f lr %.3g clips/s %.1f", step, self.max_steps,
                                     values["loss"], optimizer.param_groups[0]["lr"], clips_per_sec)

                    # ---- evaluation and checkpoints -----------------------------------------------------
                    new_best = False
                    if self.evaluator is not None and self.eval_every and step % self.eval_every == 0:
                        if is_main:
                            task.eval()
                            metrics = self.evaluator(task, step, writer)
                            task.train()
                            for key, value in metrics.items():
                                if writer is not None:
                                    writer.add_scalar(f"eval/{key}", value, step)
                            if self.best_metric in metrics and improves(metrics[self.best_metric]):
                                best["value"] = float(metrics[self.best_metric])
                                new_best = True
                        # Only rank 0 knows the metric; every rank must agree on whether save() runs.
                        flag = distributed.all_reduce_sum(torch.tensor([float(new_best)], device=device))
                        new_best = bool(flag[0] > 0)
                    due = step % self.checkpoint_every == 0 or step == self.max_steps or stop_now
                    if due and self.best_metric == "loss" and improves(smoothed_loss):
                        best["value"] = smoothed_loss
                        new_best = True
                    if due or new_best:
                        save(also_best=new_best)
                    if stop_now:
                        interrupted = True
                        if is_main:
                            log.warning("stop requested: saved step %d to %s; rerun the same command to resume",
                                        step, last)
                        break
        finally:
            data.close()  # shuts the loader's workers down
            bar.close()
            if writer is not None:
                writer.close()
        return {"step": step, "loss": smoothed_loss, "best": best, "interrupted": interrupted,
                "checkpoint": str(last)}
