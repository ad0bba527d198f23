"""One training step of a task, the same in the trainer and in the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vidssl import distributed

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


class TrainStep:
    """One optimiser step of a task: ``train_step(batches, step) -> {name: value}``.

    ``batches`` is one batch (a sample dict as the loader collates it) or a list of micro-batches whose
    gradients add up to one step (gradient accumulation). Each micro-batch is moved to the device, runs
    forward under autocast and backward (the loss scaled under fp16, and divided by the number of
    micro-batches); under DDP the gradients are synchronised on the last micro-batch only. The task's
    outputs are averaged over micro-batches and processes; a non-finite loss raises before anything is
    applied. Then the gradients are clipped (unscaled first), the optimiser and the scaler step, the
    gradients are zeroed and the task's ``on_train_step_end(step, max_steps)`` runs (``step`` is the
    number of this step, counting from 1).

    Args:
        task: the method (``forward(batch) -> {"loss", ...}``), on ``device``.
        optimizer: over the task's parameters; its learning rates are the caller's (the schedule).
        device: where batches go.
        model: what runs forward: the task, or the task wrapped in ``DistributedDataParallel``.
        precision: a key of ``PRECISIONS``; "fp16" scales the loss (``scaler``).
        grad_clip: clip the global gradient norm to this (reported as ``grad_norm``); 0 disables.
        channels_last: inputs channels-last (the weights are the caller's: ``to_channels_last``).
        max_steps: the run's length, passed to the task's hook.
    Attributes: ``scaler``, the ``GradScaler`` (enabled under fp16), whose state a run checkpoints.
    Outputs: the task's outputs as floats, averaged, plus ``grad_norm`` when clipping.
    Raises:
        FloatingPointError: the loss is NaN or infinite; the step is not applied.
    """

    def __init__(self, task: nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device,
                 model: nn.Module | None = None, precision: str = "fp32", grad_clip: float = 0.0,
                 channels_last: bool = False, max_steps: int) -> None:
        self.task, self.optimizer, self.device = task, optimizer, device
        self.model = task if model is None else model
        self.amp_dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.grad_clip, self.channels_last, self.max_steps = grad_clip, channels_last, max_steps
        self.hook = getattr(task, "on_train_step_end", None)
        self.first = True

    def __call__(self, batches: dict[str, Any] | Sequence[dict[str, Any]], step: int) -> dict[str, float]:
        micro = [batches] if isinstance(batches, dict) else list(batches)
        totals: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            sync = nullcontext()
            if i < len(micro) - 1 and isinstance(self.model, DistributedDataParallel):
                sync = self.model.no_sync()
            with sync:
                out = self._forward(move_batch(batch, self.device, self.channels_last))
                self.scaler.scale(out["loss"] / len(micro)).backward()
            for key, value in out.items():
                value = torch.as_tensor(value, device=self.device).detach().float()
                totals[key] = totals.get(key, 0) + value / len(micro)
        keys = sorted(totals)
        means = distributed.all_reduce_sum(torch.stack([totals[k] for k in keys])) / distributed.world_size()
        values = dict(zip(keys, means.tolist()))
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(f"non-finite loss ({values['loss']}) at step {step}; the step was not applied")
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            values["grad_norm"] = float(nn.utils.clip_grad_norm_(self.task.parameters(), self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.hook is not None:
            self.hook(step, self.max_steps)
        return values

    def _forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Forward under autocast; the first one's failure most often means a task and an encoder that do not fit."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            if not self.first:
                return self.model(batch)
            try:
                out = self.model(batch)
            except torch.OutOfMemoryError:
                raise  # a batch too large, not a mismatch
            except (RuntimeError, AttributeError, TypeError, KeyError, ValueError) as err:
                encoder = type(getattr(self.task, "encoder", None)).__name__
                shapes = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                raise RuntimeError(
                    f"the first training step failed: task {type(self.task).__name__} with encoder {encoder} on a "
                    f"batch of {shapes}: {type(err).__name__}: {err} (do the task, its clips and the encoder fit "
                    f"together? e.g. a 3-D task needs a video encoder)") from err
            self.first = False
            return out
