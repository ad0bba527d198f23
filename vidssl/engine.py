"""The one training loop every method shares.

A task is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, ...diagnostics}``, with
an ``encoder`` attribute and optionally ``on_train_step_end(step, max_steps)`` (momentum updates, queue
refresh) and ``on_train_step_start(step, max_steps, make_loader)`` (before each step; ``make_loader(**kw)``
is a ``DataLoader`` over the training dataset with the trainer's collate, workers and batch size, any of
them overridable: SeLaVi's passes over the whole dataset to relabel it). ``Trainer.fit`` does the
rest: optimiser (biases and norm parameters without weight decay, see ``param_groups``), per-step
cosine LR schedule with warmup, bf16/fp16 autocast, gradient clipping and accumulation, DDP, atomic
checkpoints with exact resume, a start summary and an end line, every scalar in TensorBoard and in
``RUN/scalars.{csv,txt}``, and a progress bar.

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

import csv
import functools
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
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
# The per-step lines: tools/pretrain.py keeps them in the log file only while the progress bar is shown.
step_log = logging.getLogger(f"{__name__}.steps")

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


def param_groups(module: nn.Module, *, decay_norm_and_bias: bool = False) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: biases and normalisation parameters without weight decay.

    Parameters with fewer than two dimensions (biases, BatchNorm/LayerNorm scales and shifts, learned
    temperatures) go into a group with ``weight_decay=0``, as DINO, nanoGPT, MoCo and the DPC code train;
    decaying a norm's scale towards 0 only fights the normalisation. ``decay_norm_and_bias=True`` puts
    every parameter into one group, which then takes the optimiser's own weight decay (the official DPC
    and MemDPC training). Empty groups are left out.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": trainable}]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay}] if decay else []
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


def _join_process_group() -> tuple[int, bool]:
    """Join torchrun's process group when launched by it; returns (local_rank, whether we joined it)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or distributed.is_dist():
        return local_rank, False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return local_rank, True


def _leave_process_group(*, finished: bool) -> None:
    """Leave torchrun's process group once gloo's worker threads have let go of every collective.

    gloo runs each collective on its own worker threads (``pt_gloo_runloop``), and a run's process group
    outlives ``destroy_process_group`` (DDP keeps a reference; torch 2.11 joins the threads only when the
    group is freed). A worker that lets go of a finished collective whose tensor's Python object is
    already gone must take the GIL; if the interpreter is shutting down by then, the thread is torn out
    of C++ code and the process aborts with "terminate called without an active exception" (the race
    pytorch/pytorch#179291 describes). Rank 1, which writes no checkpoint, exits right after the last
    collective, so on a loaded machine it sometimes lost that race; starving its worker threads (nice
    19, one core shared with a busy process) made it lose 4 runs in 6. The barrier (after a finished
    run; after a failure the other ranks may never come) lets every rank finish its collectives; then
    this process waits until its workers sleep.
    """
    if finished:
        dist.barrier()
    _wait_for_idle_gloo_workers()
    dist.destroy_process_group()


def _wait_for_idle_gloo_workers(timeout_s: float = 10.0) -> None:
    """Sleep (the GIL released) until every gloo worker thread of this process has been asleep for 3 polls.

    A worker that still holds a finished collective is runnable (or waits for the GIL, which the sleep
    frees); an idle one sleeps on its queue. Linux only (``/proc``); elsewhere, and after ``timeout_s``,
    it returns at once.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return
    deadline, asleep = time.monotonic() + timeout_s, 0
    while asleep < 3 and time.monotonic() < deadline:
        busy = False
        for tid in os.listdir(tasks):
            try:
                if (tasks / tid / "comm").read_text().strip() != "pt_gloo_runloop":
                    continue
                state = (tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:  # the thread ended meanwhile
                continue
            busy = busy or state != "S"
        asleep = 0 if busy else asleep + 1
        time.sleep(0.01)


def _first_forward(model: nn.Module, batch: dict[str, Any], task: nn.Module) -> dict[str, Any]:
    """The run's first forward, whose failure most often means a task and an encoder that do not fit."""
    try:
        return model(batch)
    except torch.OutOfMemoryError:
        raise  # a batch too large, not a mismatch
    except (RuntimeError, AttributeError, TypeError, KeyError, ValueError) as err:
        encoder = type(getattr(task, "encoder", None)).__name__
        shapes = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        raise RuntimeError(f"the first training step failed: task {type(task).__name__} with encoder {encoder} on "
                           f"a batch of {shapes}: {type(err).__name__}: {err} (do the task, its clips and the "
                           f"encoder fit together? e.g. a 3-D task needs a video encoder)") from err


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


class RunLog:
    """Rank 0's record of a run's scalars: TensorBoard events, and the same values as text in the run folder.

    ``RUN/scalars.csv`` holds one ``step,name,value`` row per scalar, ``RUN/scalars.txt`` one line per
    logging step (``step 10 train/loss 0.6931 ...``): greppable, readable without TensorBoard. Both are
    appended to, so a resumed run continues them (steps after the last checkpoint appear twice, as in
    TensorBoard).
    """

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(str(out_dir))
        csv_path = out_dir / "scalars.csv"
        write_header = not csv_path.exists()
        self._csv = csv_path.open("a", newline="")
        self._rows = csv.writer(self._csv)
        if write_header:
            self._rows.writerow(["step", "name", "value"])
        self._text = (out_dir / "scalars.txt").open("a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
            self._rows.writerow([step, name, f"{float(value):.8g}"])
        self._text.write(f"step {step} " + " ".join(f"{k} {float(v):.6g}" for k, v in scalars.items()) + "\n")
        self._csv.flush()
        self._text.flush()

    def close(self) -> None:
        self.tensorboard.close()
        self._csv.close()
        self._text.close()


class SkippedFiles:
    """The bad files a run met, each decided once: logged once with its reason, counted, listed in a CSV.

    A sample names the bad files replaced for it (``skipped_files``: ``path<TAB>segment<TAB>reason`` lines,
    see `vidssl.datasets.dataset`); `note` collects them from a batch. `merge` (every rank at the same
    step) shares the new ones between ranks, logs each once on rank 0, adds it to the dataset's
    ``failures`` (so the next epoch's workers skip it without decoding it again) and rewrites
    ``RUN/skipped.csv`` (``path,segment,reason``). Files the dataset set aside up front (``loader.index``)
    are counted and listed, not logged again; a resumed run continues its CSV.
    """

    COLUMNS = ("path", "segment", "reason")

    def __init__(self, csv_path: Path, dataset: Any, *, resumed: bool) -> None:
        self.csv_path = csv_path
        self.dataset = dataset
        self.files: dict[tuple[str, str], str] = {}  # (path, segment) -> reason
        self.pending: dict[tuple[str, str], str] = {}
        failures = getattr(dataset, "failures", None)
        if resumed and csv_path.exists():
            with csv_path.open(newline="") as f:
                self.files.update({(r["path"], r["segment"]): r["reason"] for r in csv.DictReader(f)})
            if failures is not None:  # decided in the run's earlier part: not decoded again
                for (path, _), reason in self.files.items():
                    failures.setdefault(path, reason)
        listed = {path for path, _ in self.files}
        for path, reason in (failures or {}).items():  # set aside up front
            if path not in listed:
                self.files[(path, "")] = reason

    def note(self, batch: dict[str, Any]) -> None:
        for text in batch.get("skipped_files", ()):
            for line in text.splitlines():
                path, segment, reason = line.split("\t", 2)
                if (path, segment) not in self.files:
                    self.pending[(path, segment)] = reason

    def merge(self, world: int, is_main: bool) -> None:
        new = self.pending
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, new)
            new = {key: reason for part in gathered for key, reason in part.items()}
        self.pending = {}
        new = {key: reason for key, reason in new.items() if key not in self.files}
        failures = getattr(self.dataset, "failures", None)
        for (path, segment), reason in new.items():
            self.files[(path, segment)] = reason
            if failures is not None:
                failures.setdefault(path, reason)
            if is_main:
                log.warning("skipping bad video %s%s: %s (%d bad files so far)", path,
                            f" [{segment}]" if segment else "", reason, len(self.files))
        if new and is_main:
            self.write()

    def write(self) -> None:
        with self.csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.COLUMNS)
            writer.writerows([path, segment, reason] for (path, segment), reason in sorted(self.files.items()))


class _TqdmStream:
    """A console stream whose writes go through ``tqdm.write``: log lines print above the bar, not glued to it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def _console_through_tqdm(enabled: bool) -> Iterator[None]:
    """While the progress bar shows, the root logger's console handlers write through ``tqdm.write``
    (their formatters and filters stay as they are)."""
    handlers = [h for h in logging.getLogger().handlers if enabled and type(h) is logging.StreamHandler
                and h.stream in (sys.stdout, sys.stderr)]
    streams = [h.setStream(_TqdmStream(h.stream)) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)


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
        best_metric: what ``best.pt`` is best at: "auto" (the evaluator's ``best_metric`` attribute when it
            has one and ``eval_every`` > 0, else the loss), "loss" (the smoothed training loss) or a metric key of
            the evaluator.
        best_mode: "min" or "max": whether a lower or a higher ``best_metric`` is better; "auto": "min" for
            the loss, the evaluator's ``best_mode`` attribute (else "max") for its metrics.
        progress: show a progress bar (rank 0); otherwise log a line every ``log_every`` steps.
        device: "auto" (CUDA if present, one GPU per local rank), "cpu" or "cuda".
        find_unused_parameters: passed to DDP, for tasks whose step leaves some parameters unused.
        decay_norm_and_bias: weight decay on biases and normalisation parameters too (off: they are
            exempt, see ``param_groups``).
        init_from: a checkpoint whose weights a new run starts from (ignored when ``out_dir`` already
            holds a run to resume): fine-tuning, or continuing a converted official checkpoint.
        init_part: what ``init_from`` loads: "model" (the whole task) or "encoder" (the backbone only).
        init_strict: refuse weights with missing or unexpected keys (off: load what fits, and list the rest).
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
        best_metric: str = "auto",
        best_mode: str = "auto",
        progress: bool = True,
        device: str = "auto",
        find_unused_parameters: bool = False,
        decay_norm_and_bias: bool = False,
        init_from: str | Path | None = None,
        init_part: str = "model",
        init_strict: bool = True,
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
        if best_metric == "auto":  # the evaluator's metric only when it runs
            best_metric = getattr(evaluator, "best_metric", "loss") if evaluator is not None and eval_every else "loss"
        if best_mode == "auto":
            best_mode = "min" if best_metric == "loss" else getattr(evaluator, "best_mode", "max")
        if best_mode not in ("min", "max"):
            raise ValueError(f"trainer.best_mode must be 'min', 'max' or 'auto', got {best_mode!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"trainer.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        if init_part not in ("model", "encoder"):
            raise ValueError(f"trainer.init_part must be 'model' or 'encoder', got {init_part!r}")
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
        self.decay_norm_and_bias = decay_norm_and_bias
        self.init_from = None if init_from in (None, "") else Path(init_from)
        self.init_part = init_part
        self.init_strict = init_strict

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def _schedule_settings(self) -> dict[str, Any]:
        return {"kind": "cosine", "max_steps": self.max_steps, "warmup_steps": self.warmup_steps,
                "min_lr_ratio": self.min_lr_ratio}

    def _report_schedule_change(self, saved: dict[str, Any] | None, step: int) -> None:
        """Say on the console when a resumed run's LR schedule differs from the one its checkpoint followed.

        The schedule is a function of the step and these settings, so restoring it means restoring the
        step (done) and following the same settings; when they changed (a longer run, another warmup),
        the new ones apply from ``step`` on, and the LR jumps: the line gives both multipliers.
        """
        now = self._schedule_settings()
        if saved is None or saved == now:
            return
        changes = [f"{key} {saved.get(key)} -> {value}" for key, value in now.items() if saved.get(key) != value]
        if step >= self.max_steps:
            log.warning("the resumed run's LR schedule changed (%s)", ", ".join(changes))
            return
        old = cosine_schedule(max_steps=saved["max_steps"], warmup_steps=saved["warmup_steps"],
                              min_ratio=saved["min_lr_ratio"])
        new = cosine_schedule(max_steps=self.max_steps, warmup_steps=self.warmup_steps, min_ratio=self.min_lr_ratio)
        before = old[min(step, len(old) - 1)]
        log.warning("the resumed run's LR schedule changed (%s): from step %d on the new one applies, the LR "
                    "multiplier goes from %.4g (the checkpoint's schedule) to %.4g", ", ".join(changes), step,
                    before, new[step])

    def _load_initial_weights(self, task: nn.Module, config: dict[str, Any] | None, *, quiet: bool) -> None:
        """Load ``init_from``'s task or encoder weights into ``task``, naming every key that does not fit."""
        path = self.init_from
        state = load_checkpoint(path)
        part = self.init_part
        if part not in state:
            raise KeyError(f"trainer.init_from={path} has no {part!r} weights (it holds {sorted(state)}); "
                           f"{'use trainer.init_part=encoder' if part == 'model' else 'is it a vidssl checkpoint?'}")
        saved_task = ((state.get("config") or {}).get("task") or {}).get("model") or {}
        run_task = ((config or {}).get("task") or {}).get("model") or {}
        if part == "model" and saved_task.get("_target_") and run_task.get("_target_") \
                and saved_task["_target_"] != run_task["_target_"]:
            raise ValueError(f"trainer.init_from={path} holds a {saved_task['_target_']} task, this run trains "
                             f"{run_task['_target_']}: use trainer.init_part=encoder to take its backbone only")
        target = task if part == "model" else task.encoder
        weights = state[part]
        own = target.state_dict()
        missing = sorted(own.keys() - weights.keys())
        unexpected = sorted(weights.keys() - own.keys())
        shapes = sorted(f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & weights.keys()
                        if weights[k].shape != own[k].shape)
        problems = [f"{name} ({len(keys)}): {', '.join(keys)}" for name, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch, checkpoint vs run", shapes))
                    if keys]
        if problems and self.init_strict:
            raise RuntimeError(f"trainer.init_from={path}: its {part} weights do not fit this run's "
                               f"{'task' if part == 'model' else 'encoder'}; " + "; ".join(problems)
                               + " (trainer.init_strict=false loads what fits)")
        fitting = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
        target.load_state_dict(fitting, strict=False)
        if not quiet:
            log.info("initialised the %s from %s (%d tensors)%s", part, path, len(fitting),
                     "; not loaded: " + "; ".join(problems) if problems else "")

    def _log_start(self, task: nn.Module, dataset: Dataset, device: torch.device, world: int, step: int) -> None:
        """The start summary: what is trained, on what, how, and where it goes."""
        params = sum(p.numel() for p in task.parameters())
        trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
        set_aside = len(getattr(dataset, "failures", {}))
        clips = f"{len(dataset)} clips" + (f" ({set_aside} set aside as unreadable or too short)" if set_aside else "")
        per_step = self.batch_size * world * self.accumulate
        log.info("training %s: %s parameters (%s trainable) on %s, precision %s", type(task).__name__,
                 f"{params:,}", f"{trainable:,}", device, self.precision)
        log.info("data: %s; batch %d per process x %d process(es) x %d accumulated = %d clips per step",
                 clips, self.batch_size, world, self.accumulate, per_step)
        log.info("steps %d -> %d (warmup %d, cosine to %g x LR); weight decay on %s", step, self.max_steps,
                 self.warmup_steps, self.min_lr_ratio,
                 "every parameter" if self.decay_norm_and_bias else "weights only (not biases/norms)")
        log.info("checkpoints: %s (every %d steps; best.pt by %s, %s is better); scalars: %s/scalars.{csv,txt}",
                 self.checkpoint_dir, self.checkpoint_every,
                 "the smoothed training loss" if self.best_metric == "loss" else f"the evaluator's {self.best_metric}",
                 "lower" if self.best_mode == "min" else "higher", self.out_dir)

    def fit(
        self,
        task: nn.Module,
        dataset: Dataset,
        optimizer_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        *,
        config: dict[str, Any] | None = None,
        collate_fn: Callable[[Sequence[Any]], Any] = default_collate,
    ) -> dict[str, Any]:
        """Train ``task`` for ``max_steps`` steps (or resume a run in ``out_dir`` and finish it).

        Args:
            task: the method (``forward(batch) -> {"loss", ...}``, ``encoder``).
            dataset: map-style dataset of sample dicts (``set_epoch`` is called if it exists).
            optimizer_factory: parameter groups (``param_groups``) → optimiser (a Hydra partial of AdamW/SGD).
            config: the resolved run config, stored in every checkpoint and as ``config.yaml``.
            collate_fn: list of samples → batch.
        Outputs:
            {"step", "loss" (smoothed), "best", "interrupted", "checkpoint"}.
        Raises:
            FloatingPointError: the loss became NaN/inf; nothing is saved for that step.
        """
        local_rank, joined = _join_process_group()
        finished = False
        try:
            summary = self._fit(task, dataset, optimizer_factory, config, collate_fn, local_rank)
            finished = True
            return summary
        finally:
            if joined:
                _leave_process_group(finished=finished)

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
        optimizer = optimizer_factory(param_groups(task, decay_norm_and_bias=self.decay_norm_and_bias))
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
            configured_lr = [group["initial_lr"] for group in optimizer.param_groups]
            try:
                optimizer.load_state_dict(state["optimizer"])
            except ValueError as err:
                raise ValueError(f"{last}: its optimiser state does not fit this run's parameter groups ({err}); "
                                 "resume with the same optimiser and trainer.decay_norm_and_bias, or start a "
                                 "new trainer.out_dir") from err
            restored_lr = [group["initial_lr"] for group in optimizer.param_groups]
            if is_main and restored_lr != configured_lr:
                log.warning("%s was trained at base LR %s, the optimiser config says %s: the checkpoint's is kept "
                            "(start a new trainer.out_dir, or trainer.init_from=%s, to train at another LR)",
                            last, restored_lr[0], configured_lr[0], last)
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
                if self.init_from is not None:
                    log.info("trainer.init_from=%s is not used: the run resumes from its own last.pt", self.init_from)
                self._report_schedule_change(state.get("scheduler"), step)
        else:
            seed_everything(self.seed + rank)
            if self.init_from is not None:
                self._load_initial_weights(task, config, quiet=not is_main)
        if step >= self.max_steps:
            if is_main:
                log.info("already finished at step %d: nothing to do (raise trainer.max_steps to continue)", step)
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
                "scheduler": self._schedule_settings(),
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

        run_log = RunLog(self.out_dir) if is_main else None
        writer = run_log.tensorboard if run_log is not None else None
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

        if is_main:
            self._log_start(task, dataset, device, world, step)
        started = time.perf_counter()

        # ---- the loop --------------------------------------------------------------------------------
        step_start = getattr(task, "on_train_step_start", None)
        make_loader = functools.partial(DataLoader, dataset, batch_size=self.batch_size, collate_fn=collate_fn,
                                        num_workers=self.num_workers, pin_memory=device.type == "cuda")
        data = batches()
        bar = tqdm(total=self.max_steps, initial=step, disable=not (self.progress and is_main),
                   dynamic_ncols=True, unit="step")
        interrupted = False
        first_step = True
        log_keys: list[str] | None = None
        clips_since_log, time_of_log = 0, time.perf_counter()
        skipped_total = 0  # clips this rank replaced because their file was bad
        skipped_files = SkippedFiles(self.out_dir / "skipped.csv", dataset, resumed=step > 0)
        if is_main and skipped_files.files:
            skipped_files.write()  # the files set aside up front
        try:
            with _StopRequest() as stop, _console_through_tqdm(not bar.disable):
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
                        skipped_files.note(batch)
                        batch = move_batch(batch, device, self.channels_last)
                        last_micro = micro == self.accumulate - 1
                        sync = nullcontext() if world == 1 or last_micro else model.no_sync()
                        with sync:
                            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                                out = _first_forward(model, batch, task) if first_step else model(batch)
                            scaler.scale(out["loss"] / self.accumulate).backward()
                        for key, value in out.items():
                            value = torch.as_tensor(value, device=device).detach().float()
                            totals[key] = totals.get(key, 0) + value / self.accumulate
                    first_step = False
                    skipped_total += skipped
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
                    log_now = step % self.log_every == 0 or step == self.max_steps
                    if world == 1 or log_now:  # under DDP the ranks share their bad files at logging steps
                        skipped_files.merge(world, is_main)
                    if log_now:
                        now = time.perf_counter()
                        clips_per_sec = clips_since_log / max(now - time_of_log, 1e-9)
                        clips_since_log, time_of_log = 0, now
                        if run_log is not None:
                            scalars = {f"train/{key}": value for key, value in values.items()}
                            scalars.update({"train/lr": optimizer.param_groups[0]["lr"],
                                            "train/clips_per_sec": clips_per_sec, "train/epoch": epoch})
                            if skipped_files.files:  # cumulative: every bad file of the run so far
                                scalars["train/skipped_videos"] = len(skipped_files.files)
                            run_log.write(step, scalars)
                        bar.set_postfix(loss=f"{values['loss']:.4f}", clips_s=f"{clips_per_sec:.1f}")
                        if is_main:
                            step_log.info("step %d/%d loss %.4f lr %.3g clips/s %.1f", step, self.max_steps,
                                     values["loss"], optimizer.param_groups[0]["lr"], clips_per_sec)

                    # ---- evaluation and checkpoints -----------------------------------------------------
                    new_best = False
                    if self.evaluator is not None and self.eval_every and step % self.eval_every == 0:
                        if is_main:
                            task.eval()
                            metrics = self.evaluator(task, step, writer)
                            task.train()
                            run_log.write(step, {f"eval/{key}": value for key, value in metrics.items()})
                            log.info("step %d eval: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
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
            if run_log is not None:
                run_log.close()
        if is_main and not interrupted:
            best_file = self.checkpoint_dir / "best.pt"
            log.info("finished at step %d in %s: loss %.4g (smoothed); last: %s; best (%s %s): %s%s", step,
                     _duration(time.perf_counter() - started), smoothed_loss, last, best["metric"],
                     "none yet" if best["value"] is None else f"{best['value']:.4g}",
                     best_file if best_file.exists() else "not written",
                     f"; {skipped_total} unreadable clips replaced (rank 0)" if skipped_total else "")
            if skipped_files.files:
                log.warning("%d bad files skipped in this run, listed with their reasons in %s",
                            len(skipped_files.files), skipped_files.csv_path)
        return {"step": step, "loss": smoothed_loss, "best": best, "interrupted": interrupted,
                "checkpoint": str(last)}
