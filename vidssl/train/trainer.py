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

The parts, each in its module: `vidssl.train.step.TrainStep` (one optimiser step: autocast, accumulation,
clipping, the task's hook; the benchmarks time the same one), `vidssl.train.state.TrainState` (step,
epoch, position, best, RNGs), `vidssl.train.checkpointer.Checkpointer` (atomic ``step_*/last/best.pt``, the
best rule) and `vidssl.train.run_log` (scalars, bad files); the files are `vidssl.run.Checkpoint`s. ``fit`` below builds them, restores or starts, then loops: draw
the step's batches, step, log, maybe evaluate, maybe checkpoint.

Resume: if ``out_dir/checkpoints/last.pt`` exists, ``fit`` continues from it — model, optimiser, scaler,
every RNG of every rank, the step, and the sampler's (epoch, position). Each sample's randomness lives
in the dataset, seeded by (seed, epoch, index) (``set_epoch`` is called when the dataset has it), so the
run continues mid-epoch without reading any batch twice, and with any number of loader workers.
Whether the checkpoint's model config matches the run's is for the caller to check (`tools/pretrain.py`
does, with `Checkpoint.refuse_model_change`): weights of the same shapes load into a different model without complaint.

Distributed: launched by torchrun, ``fit`` joins the process group (NCCL on CUDA, gloo on CPU), wraps
the task in DDP, shards every global batch by rank (``vidssl.train.batch_sampler``) and leaves logging and
checkpoints to rank 0. ``trainer.batch_size`` is per process: the global batch is
``batch_size × world_size × accumulate``. One machine::

    torchrun --nproc_per_node=2 tools/pretrain.py task=simclr dataset=synthetic dataset.root=DIR ...

Several machines (run the same line on each; any free port on the first node)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-id=myrun \\
        --rdzv-endpoint=NODE0_HOST:29400 tools/pretrain.py task=... trainer.out_dir=SHARED/RUN

``trainer.out_dir`` must then be on a filesystem every node sees, so a restart finds ``last.pt``.
On SLURM through Hydra's submitit launcher (``tools/pretrain.py -m hydra/launcher=slurm ...``) the job's
environment gives the same variables (`vidssl.distributed.adopt_submitit_environment`), and submitit's
time-out signal stops and saves the run like SIGTERM before submitit requeues the job (`_StopRequest`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vidssl import distributed
from vidssl.files import atomic_write_text
from vidssl.monitors import CollapseWatch
from vidssl.run import Checkpoint, Exports, RunDir
from vidssl.train.batch_sampler import ResumableBatchSampler
from vidssl.train.checkpointer import Checkpointer
from vidssl.train.run_log import RunLog, SkippedFiles, console_through_tqdm
from vidssl.train.state import TrainState
from vidssl.train.step import PRECISIONS, TrainStep, move_batch, to_channels_last

__all__ = ["PRECISIONS", "SkippedFiles", "Trainer", "TrainerConfig", "cosine_schedule", "move_batch", "param_groups",
           "seed_everything", "to_channels_last"]

log = logging.getLogger(__name__)
# The per-step lines: tools/pretrain.py keeps them in the log file only while the progress bar is shown.
step_log = logging.getLogger(f"{__name__}.steps")

Evaluator = Callable[[nn.Module, int, SummaryWriter | None], dict[str, float]]


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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _write_report(out_dir: Path) -> None:
    """The run's ``report.md`` and plots; a plotting failure is reported, never fatal to a trained run."""
    try:
        from vidssl.run.report import write_report

        log.info("report: %s", write_report(out_dir).path)
    except Exception as err:  # noqa: BLE001 - the checkpoints are written; the report can be redone
        log.warning("could not write the run report (%s: %s); `python tools/report.py run=%s` retries",
                    type(err).__name__, err, out_dir)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process; every process calls it at the same point."""
    if distributed.world_size() == 1:
        return flag
    return bool(distributed.all_reduce_sum(torch.tensor([float(flag)], device=device))[0] > 0)


@dataclass
class _Run:
    """What one ``fit`` call works with: built by ``Trainer._setup``, the records by ``_open_records``."""

    task: nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer
    train_step: TrainStep
    config: dict[str, Any] | None
    world: int
    is_main: bool
    lr_factors: list[float]  # the LR multiplier of every step
    sampler: ResumableBatchSampler
    state: TrainState
    run_log: RunLog | None = None  # rank 0 only
    collapse: CollapseWatch | None = None  # rank 0 only: warns once per health monitor that signals collapse
    skipped: SkippedFiles | None = None
    bar: tqdm | None = None
    clips_since_log: int = 0
    time_of_log: float = 0.0
    replaced_clips: int = 0  # clips this rank replaced because their file was bad


def _requeue_signal() -> signal.Signals | None:
    """The signal submitit turns into checkpoint-and-requeue (SLURM's time-out and pre-emption warning:
    USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` names another), when running under submitit."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop reads after each step (so it can save and exit).

    Under submitit its requeue signal does the same, and submitit's own handler of it (which re-submits
    the job and exits) is kept in ``deferred`` for after the save: `Trainer.fit` calls it once the run has
    stopped and left its process group, so the requeued job resumes from the step the signal stopped.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # which signal: the tool exits 128 + signum (130 Ctrl-C, 143 SIGTERM)
        self._previous: dict[int, Any] = {}
        self.deferred: tuple[Callable[[int, Any], Any], int] | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signum = signum
        if signum == _requeue_signal():
            self.deferred = (self._previous[signum], signum)
        # A second Ctrl-C falls through to the old handler: a way out if saving hangs.
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> _StopRequest:
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
            requeue = _requeue_signal()
            if requeue is not None and callable(signal.getsignal(requeue)):
                self._previous[requeue] = signal.signal(requeue, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """Everything the loop does, as typed values (``vidssl/configs/trainer/default.yaml`` holds the same keys; each
    is documented below it)."""

    max_steps: int
    """Optimiser steps to train for (each takes ``accumulate`` batches)."""
    warmup_steps: int = 0
    """Linear LR warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.0
    """The final LR as a fraction of the base LR."""
    batch_size: int
    """Samples per batch in each process."""
    accumulate: int = 1
    """Batches whose gradients are summed into one optimiser step."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """bf16: autocast (CPU or CUDA); fp16: autocast + gradient scaling (CUDA)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this; 0 disables."""
    out_dir: Path
    """The run directory (checkpoints, TensorBoard events, config.yaml); reusing it resumes."""
    checkpoint_every: int = 500
    """Write ``step_<step, 7 digits>.pt`` + ``last.pt`` every this many steps (and at the end)."""
    keep_last: int = 2
    """How many ``step_*.pt`` files to keep (``last.pt`` and ``best.pt`` always stay)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA if present (one GPU per local rank), else the CPU."""
    num_workers: int = 2
    """DataLoader worker processes."""
    seed: int = 0
    """Seed of the batch order and of the training RNG (rank r draws from seed + r)."""
    init_from: Path | None = None
    """A checkpoint whose weights a new run starts from (ignored when ``out_dir`` already holds a run to
    resume): fine-tuning, or continuing a converted official checkpoint."""
    init_part: Literal["model", "encoder"] = "model"
    """What ``init_from`` loads: "model" (the whole task) or "encoder" (the backbone only)."""
    init_strict: bool = True
    """Refuse weights with missing or unexpected keys (off: load what fits, and list the rest)."""
    best_mode: Literal["auto", "min", "max"] = "auto"
    """"min" or "max": whether a lower or a higher ``best_metric`` is better; "auto": "min" for the
    loss, the evaluator's ``best_mode`` attribute (else "max") for its metrics."""
    best_metric: str = "auto"
    """What ``best.pt`` is best at: "auto" (the evaluator's ``best_metric`` attribute when it has one
    and ``eval_every`` > 0, else the loss), "loss" (the smoothed training loss) or a metric key of the
    evaluator."""
    eval_every: int = 0
    """Call ``evaluator`` every this many steps (0: never)."""
    progress: bool = True
    """Show a progress bar (rank 0); otherwise log a line every ``log_every`` steps."""
    log_every: int = 10
    """TensorBoard/progress update period in steps."""
    channels_last: bool = False
    """Channels-last weights and inputs (faster convolutions on recent GPUs)."""
    find_unused_parameters: bool = False
    """Passed to DDP, for tasks whose step leaves some parameters unused."""
    decay_norm_and_bias: bool = False
    """Weight decay on biases and normalisation parameters too (off: they are exempt, see
    ``param_groups``)."""
    report: bool = False
    """At the end of a finished run, write ``RUN/report.md`` and its PNG plots (`vidssl.run.report`; about
    1-2 s of plotting). ``tools/pretrain.py`` turns it on (``trainer.report``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "init_from", None if self.init_from in (None, "") else Path(self.init_from))
        positive = {"max_steps": self.max_steps, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
                    "log_every": self.log_every, "accumulate": self.accumulate}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {value}")
        for name, value in {"num_workers": self.num_workers, "keep_last": self.keep_last, "warmup_steps": self.warmup_steps,
                            "eval_every": self.eval_every, "grad_clip": self.grad_clip}.items():
            if value < 0:
                raise ValueError(f"trainer.{name} must be >= 0, got {value}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.best_mode not in ("min", "max", "auto"):
            raise ValueError(f"trainer.best_mode must be 'min', 'max' or 'auto', got {self.best_mode!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"trainer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.init_part not in ("model", "encoder"):
            raise ValueError(f"trainer.init_part must be 'model' or 'encoder', got {self.init_part!r}")


class Trainer:
    """Trains a task on a dataset; everything the loop does is a `TrainerConfig` value.

    ``Trainer(config, evaluator=...)``, or ``Trainer(evaluator=..., **options)`` with the config's keys (what
    Hydra's ``trainer`` group instantiates). ``evaluator``: ``(task, step, writer) -> {metric: value}``, run on
    rank 0 every ``eval_every`` steps with the task in eval mode.
    """

    def __init__(self, config: TrainerConfig | None = None, /, *, evaluator: Evaluator | None = None,
                 **options: Any) -> None:
        if config is None:
            config = TrainerConfig(**options)
        elif options:
            raise TypeError(f"Trainer takes a TrainerConfig or its keys, not both: {sorted(options)}")
        self.config = config
        self.evaluator = evaluator
        best_metric, best_mode = config.best_metric, config.best_mode
        if best_metric == "auto":  # the evaluator's metric only when it runs
            best_metric = (getattr(evaluator, "best_metric", "loss") if evaluator is not None and config.eval_every
                           else "loss")
        if best_mode == "auto":
            best_mode = "min" if best_metric == "loss" else getattr(evaluator, "best_mode", "max")
        if best_mode not in ("min", "max"):
            raise ValueError(f"trainer.best_mode must be 'min', 'max' or 'auto', got {best_mode!r}")
        if best_metric != "loss" and evaluator is None:
            raise ValueError(f"trainer.best_metric={best_metric!r} needs an evaluator that reports it")
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.run_dir = RunDir(config.out_dir)
        self.checkpointer = Checkpointer(self.run_dir, config.keep_last, best_mode=best_mode)

    def fit(
        self,
        task: nn.Module,
        dataset: Dataset,
        optimizer_factory: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        *,
        config: dict[str, Any] | None = None,
        collate_fn: Callable[[Sequence[Any]], Any] = default_collate,
        resume: Checkpoint | None = None,
    ) -> dict[str, Any]:
        """Train ``task`` for ``max_steps`` steps (or resume a run in ``out_dir`` and finish it).

        Args:
            task: the method (``forward(batch) -> {"loss", ...}``, ``encoder``).
            dataset: map-style dataset of sample dicts (``set_epoch`` is called if it exists).
            optimizer_factory: parameter groups (``param_groups``) → optimiser (a Hydra partial of AdamW/SGD).
            config: the resolved run config, stored in every checkpoint and as ``config.yaml``.
            collate_fn: list of samples → batch.
            resume: ``last.pt`` when the caller has loaded it already (`tools/pretrain.py` does, to check its
                model config first), so the file is read once; None: the trainer loads it if it exists.
        Outputs:
            {"step", "loss" (smoothed), "best", "interrupted", "checkpoint"}.
        Raises:
            FloatingPointError: the loss became NaN/inf; nothing is saved for that step.
        """
        local_rank, joined = distributed.join_process_group()
        finished = False
        self._deferred_signal: tuple[Callable[[int, Any], Any], int] | None = None
        try:
            summary = self._fit(task, dataset, optimizer_factory, config, collate_fn, local_rank, resume)
            finished = True
        finally:
            if joined:
                distributed.leave_process_group(finished=finished)
        if self._deferred_signal is not None:
            # Saved, and out of the process group: now submitit's handler re-submits the job (rank 0 exits).
            handler, signum = self._deferred_signal
            handler(signum, None)
        return summary

    def _fit(self, task, dataset, optimizer_factory, config, collate_fn, local_rank, resume) -> dict[str, Any]:
        """Set up, resume or start, then loop: one step, its log line, maybe an evaluation, maybe a checkpoint."""
        run = self._setup(task, dataset, optimizer_factory, config, local_rank)
        saved = resume if resume is not None else self.checkpointer.load()
        if saved is not None:
            self._resume(run, saved)
        else:
            self._start(run)
        if run.state.step >= self.config.max_steps:
            if run.is_main:
                log.info("already finished at step %d: nothing to do (raise trainer.max_steps to continue)",
                         run.state.step)
            return self._summary(run, interrupted=False)
        self._open_records(run, dataset)
        make_loader = functools.partial(DataLoader, dataset, batch_size=self.config.batch_size, collate_fn=collate_fn,
                                        num_workers=self.config.num_workers, pin_memory=run.device.type == "cuda")
        data = self._batches(run, dataset, collate_fn)
        started, stopped = time.perf_counter(), False
        try:
            with _StopRequest() as stop, console_through_tqdm(not run.bar.disable):
                while run.state.step < self.config.max_steps and not stopped:
                    values = self._step(run, data, make_loader)
                    stopped = _any_rank(stop.requested, run.device)  # all ranks stop (and save) at one step
                    self._log_step(run, values)
                    new_best = self._maybe_evaluate(run)
                    self._maybe_checkpoint(run, new_best, stopping=stopped)
            self._deferred_signal = stop.deferred
        finally:
            data.close()  # shuts the loader's workers down
            run.bar.close()
            if run.run_log is not None:
                run.run_log.close()
        if run.is_main:
            self._log_end(run, started, stopped)
            if self.config.report and not stopped:
                _write_report(self.config.out_dir)
        return {**self._summary(run, interrupted=stopped), "signal": stop.signum if stopped else None}

    def _setup(self, task, dataset, optimizer_factory, config, local_rank) -> _Run:
        """The device, the task on it (in DDP under torchrun), its optimiser and step, and a fresh train state."""
        rank, world = distributed.rank(), distributed.world_size()
        if self.config.device == "cuda" or (self.config.device == "auto" and torch.cuda.is_available()):
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if self.config.precision == "fp16" and device.type != "cuda":
            raise ValueError("trainer.precision=fp16 needs a GPU; use bf16 on the CPU")
        task.to(device)
        if self.config.channels_last:
            to_channels_last(task)
        optimizer = optimizer_factory(param_groups(task, decay_norm_and_bias=self.config.decay_norm_and_bias))
        for group in optimizer.param_groups:
            # The schedule multiplies the base LR; keep it in the group so it travels with the state.
            group.setdefault("initial_lr", group["lr"])
        model = task
        if world > 1:
            model = DistributedDataParallel(task, device_ids=[local_rank] if device.type == "cuda" else None,
                                            find_unused_parameters=self.config.find_unused_parameters)
        train_step = TrainStep(task, optimizer, device=device, model=model, precision=self.config.precision,
                               grad_clip=self.config.grad_clip, channels_last=self.config.channels_last, max_steps=self.config.max_steps)
        return _Run(
            task=task, device=device, optimizer=optimizer, train_step=train_step, config=config, world=world,
            is_main=rank == 0,
            lr_factors=cosine_schedule(max_steps=self.config.max_steps, warmup_steps=self.config.warmup_steps,
                                       min_ratio=self.config.min_lr_ratio),
            sampler=ResumableBatchSampler(size=len(dataset), batch_size=self.config.batch_size, seed=self.config.seed, rank=rank,
                                          world_size=world),
            state=TrainState(best_metric=self.best_metric, samples_per_batch=self.config.batch_size * world))

    def _start(self, run: _Run) -> None:
        """A new run: seed this rank, then load ``init_from``'s weights if given."""
        seed_everything(self.config.seed + distributed.rank())
        if self.config.init_from is not None:
            self._load_initial_weights(run.task, run.config, quiet=not run.is_main)

    def _load_initial_weights(self, task: nn.Module, config: dict[str, Any] | None, *, quiet: bool) -> None:
        """Load ``init_from``'s task or encoder weights into ``task``, naming every key that does not fit."""
        part = self.config.init_part
        source = Checkpoint.load(self.config.init_from)
        loaded, problems = source.load_into(task if part == "model" else task.encoder, part,
                                            strict=self.config.init_strict, config=config)
        if not quiet:
            log.info("initialised the %s from %s (%d tensors)%s", part, self.config.init_from, loaded,
                     "; not loaded: " + "; ".join(problems) if problems else "")

    def _resume(self, run: _Run, saved: Checkpoint) -> None:
        """Continue from ``last.pt``: weights, optimiser (its base LR is kept), scaler, train state and RNGs."""
        last = self.run_dir.last
        try:
            run.task.load_state_dict(saved.model)
        except RuntimeError as err:
            raise RuntimeError(f"{last} holds a different model than this run's config: {err}") from err
        configured_lr = [group["initial_lr"] for group in run.optimizer.param_groups]
        try:
            run.optimizer.load_state_dict(saved.training["optimizer"])
        except ValueError as err:
            raise ValueError(f"{last}: its optimiser state does not fit this run's parameter groups ({err}); "
                             "resume with the same optimiser and trainer.decay_norm_and_bias, or start a "
                             "new trainer.out_dir") from err
        restored_lr = [group["initial_lr"] for group in run.optimizer.param_groups]
        run.train_step.scaler.load_state_dict(saved.training["scaler"])
        try:
            run.state.load_state_dict(saved.training)
        except ValueError as err:
            raise ValueError(f"{last}: {err}") from err
        if not run.is_main:
            return
        if restored_lr != configured_lr:
            log.warning("%s was trained at base LR %s, the optimiser config says %s: the checkpoint's is kept "
                        "(start a new trainer.out_dir, or trainer.init_from=%s, to train at another LR)",
                        last, restored_lr[0], configured_lr[0], last)
        log.info("resuming from %s at step %d (epoch %d, batch %d)", last, run.state.step, run.state.epoch,
                 run.state.batch)
        if self.config.init_from is not None:
            log.info("trainer.init_from=%s is not used: the run resumes from its own last.pt", self.config.init_from)
        self._report_schedule_change(saved.training.get("scheduler"), run.state.step)

    def _schedule_settings(self) -> dict[str, Any]:
        return {"kind": "cosine", "max_steps": self.config.max_steps, "warmup_steps": self.config.warmup_steps,
                "min_lr_ratio": self.config.min_lr_ratio}

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
        if step >= self.config.max_steps:
            log.warning("the resumed run's LR schedule changed (%s)", ", ".join(changes))
            return
        old = cosine_schedule(max_steps=saved["max_steps"], warmup_steps=saved["warmup_steps"],
                              min_ratio=saved["min_lr_ratio"])
        new = cosine_schedule(max_steps=self.config.max_steps, warmup_steps=self.config.warmup_steps, min_ratio=self.config.min_lr_ratio)
        before = old[min(step, len(old) - 1)]
        log.warning("the resumed run's LR schedule changed (%s): from step %d on the new one applies, the LR "
                    "multiplier goes from %.4g (the checkpoint's schedule) to %.4g", ", ".join(changes), step,
                    before, new[step])

    def _open_records(self, run: _Run, dataset: Dataset) -> None:
        """Rank 0's scalar log, ``config.yaml`` and start summary; the run's bad files; the progress bar."""
        if run.is_main:
            run.run_log = RunLog(self.run_dir)
            run.collapse = CollapseWatch()
            if run.config is not None:
                from omegaconf import OmegaConf

                atomic_write_text(self.run_dir.config, OmegaConf.to_yaml(OmegaConf.create(run.config)))
            self._log_start(run.task, dataset, run.device, run.world, run.state.step)
        run.skipped = SkippedFiles(self.run_dir.skipped, dataset, resumed=run.state.step > 0)
        if run.is_main and run.skipped.files:
            run.skipped.write()  # the files set aside up front
        run.bar = tqdm(total=self.config.max_steps, initial=run.state.step, disable=not (self.config.progress and run.is_main),
                       dynamic_ncols=True, unit="step")
        run.time_of_log = time.perf_counter()

    def _log_start(self, task: nn.Module, dataset: Dataset, device: torch.device, world: int, step: int) -> None:
        """The start summary: what is trained, on what, how, and where it goes."""
        params = sum(p.numel() for p in task.parameters())
        trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
        set_aside = len(getattr(dataset, "failures", {}))
        clips = f"{len(dataset)} clips" + (f" ({set_aside} set aside as unreadable or too short)" if set_aside else "")
        per_step = self.config.batch_size * world * self.config.accumulate
        log.info("training %s: %s parameters (%s trainable) on %s, precision %s", type(task).__name__,
                 f"{params:,}", f"{trainable:,}", device, self.config.precision)
        log.info("data: %s; batch %d per process x %d process(es) x %d accumulated = %d clips per step",
                 clips, self.config.batch_size, world, self.config.accumulate, per_step)
        log.info("steps %d -> %d (warmup %d, cosine to %g x LR); weight decay on %s", step, self.config.max_steps,
                 self.config.warmup_steps, self.config.min_lr_ratio,
                 "every parameter" if self.config.decay_norm_and_bias else "weights only (not biases/norms)")
        log.info("checkpoints: %s (every %d steps; best.pt by %s, %s is better); scalars: %s/scalars.{csv,txt}",
                 self.run_dir.checkpoints, self.config.checkpoint_every,
                 "the smoothed training loss" if self.best_metric == "loss" else f"the evaluator's {self.best_metric}",
                 "lower" if self.best_mode == "min" else "higher", self.run_dir.root)

    def _batches(self, run: _Run, dataset: Dataset, collate_fn: Callable) -> Iterator[dict[str, Any]]:
        """Batches forever, epoch after epoch, from the train state's (epoch, batch) on, which they advance."""
        state = run.state
        while True:
            run.sampler.set_state(state.epoch, state.batch)
            set_epoch = getattr(dataset, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(state.epoch)  # before the workers fork, so they copy the new epoch
            # An explicit generator: the DataLoader would otherwise draw its worker seed from the
            # global RNG, and a resumed run (which starts a loader mid-epoch) would drift from it.
            loader = DataLoader(dataset, batch_sampler=run.sampler, num_workers=self.config.num_workers,
                                collate_fn=collate_fn, pin_memory=run.device.type == "cuda",
                                generator=torch.Generator().manual_seed(self.config.seed + state.epoch))
            for batch in loader:
                state.batch += 1
                yield batch
            state.epoch, state.batch = state.epoch + 1, 0

    def _step(self, run: _Run, data: Iterator[dict[str, Any]], make_loader: Callable[..., DataLoader]
              ) -> dict[str, float]:
        """The task's step-start hook, the scheduled LR, ``accumulate`` batches and one ``TrainStep`` on them."""
        state = run.state
        step_start = getattr(run.task, "on_train_step_start", None)
        if step_start is not None:
            step_start(state.step, self.config.max_steps, make_loader)
        for group in run.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * run.lr_factors[state.step]
        schedule = getattr(run.task, "optimizer_schedule", None)
        if schedule is not None:  # a task's own lr/weight-decay schedule (V-JEPA's official one) replaces it
            schedule(state.step, self.config.max_steps, run.optimizer.param_groups)
        batches = [next(data) for _ in range(self.config.accumulate)]
        for batch in batches:
            run.skipped.note(batch)
            run.replaced_clips += int(batch["skipped"].sum()) if "skipped" in batch else 0
        try:
            values = run.train_step(batches, state.step + 1)
        except FloatingPointError as err:
            raise FloatingPointError(f"{err} and the last good checkpoint in {self.run_dir.checkpoints} is left as "
                                     "it was") from err
        state.step += 1
        state.observe_loss(values["loss"])
        run.clips_since_log += self.config.batch_size * self.config.accumulate * run.world
        run.bar.update(1)
        return values

    def _log_step(self, run: _Run, values: dict[str, float]) -> None:
        """Share the new bad files; every ``log_every`` steps write the scalars and the step line."""
        step = run.state.step
        log_now = step % self.config.log_every == 0 or step == self.config.max_steps
        if run.world == 1 or log_now:  # under DDP the ranks share their bad files at logging steps
            run.skipped.merge(run.world, run.is_main)
        if not log_now:
            return
        now = time.perf_counter()
        clips_per_sec = run.clips_since_log / max(now - run.time_of_log, 1e-9)
        run.clips_since_log, run.time_of_log = 0, now
        lr = run.optimizer.param_groups[0]["lr"]
        if run.run_log is not None:
            scalars = {f"train/{key}": value for key, value in values.items()}
            scalars.update({"train/lr": lr, "train/clips_per_sec": clips_per_sec, "train/epoch": run.state.epoch})
            if run.skipped.files:  # cumulative: every bad file of the run so far
                scalars["train/skipped_videos"] = len(run.skipped.files)
            run.run_log.write(step, scalars)
            run.collapse.check(step, scalars)
        run.bar.set_postfix(loss=f"{values['loss']:.4f}", clips_s=f"{clips_per_sec:.1f}")
        if run.is_main:
            step_log.info("step %d/%d loss %.4f lr %.3g clips/s %.1f", step, self.config.max_steps, values["loss"], lr,
                          clips_per_sec)

    def _maybe_evaluate(self, run: _Run) -> bool:
        """Every ``eval_every`` steps run the evaluator on rank 0; whether its metric is a new best."""
        step = run.state.step
        if self.evaluator is None or not self.config.eval_every or step % self.config.eval_every:
            return False
        new_best = False
        if run.is_main:
            run.task.eval()
            metrics = self.evaluator(run.task, step, run.run_log.tensorboard)
            run.task.train()
            run.run_log.write(step, {f"eval/{key}": value for key, value in metrics.items()})
            log.info("step %d eval: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
            if self.best_metric in metrics and self.checkpointer.improves(metrics[self.best_metric], run.state.best["value"]):
                run.state.best["value"] = float(metrics[self.best_metric])
                new_best = True
        return _any_rank(new_best, run.device)  # only rank 0 knows; every rank must agree on saving

    def _maybe_checkpoint(self, run: _Run, new_best: bool, *, stopping: bool) -> None:
        """Save every ``checkpoint_every`` steps, at the last step, when stopping, and at a new best metric;
        a best smoothed loss is looked for at the regular saves only."""
        state = run.state
        due = state.step % self.config.checkpoint_every == 0 or state.step == self.config.max_steps or stopping
        if due and self.best_metric == "loss" and self.checkpointer.improves(state.smoothed_loss, state.best["value"]):
            state.best["value"] = state.smoothed_loss
            new_best = True
        if not (due or new_best):
            return
        train_state = state.state_dict()  # on every rank: it gathers their RNG states
        if run.is_main:
            # a task may name the encoder evaluations should read (V-JEPA: its EMA target), else its encoder
            encoder = getattr(run.task, "eval_encoder", run.task.encoder)
            self.checkpointer.save({"model": run.task, "encoder": encoder, "optimizer": run.optimizer,
                                    "scheduler": self._schedule_settings(), "scaler": run.train_step.scaler,
                                    **train_state, "config": run.config,
                                    "exports": Exports.of_run(run.task, run.config).to_dict()},
                                   step=state.step, best=new_best)

    def _log_end(self, run: _Run, started: float, stopped: bool) -> None:
        """The end line and the bad files met; or, for a run stopped by a signal, how to resume it."""
        state, last, best = run.state, self.run_dir.last, self.run_dir.best
        if stopped:
            log.warning("stop requested: saved step %d to %s; rerun the same command to resume", state.step, last)
            return
        log.info("finished at step %d in %s: loss %.4g (smoothed); last: %s; best (%s %s): %s%s", state.step,
                 _duration(time.perf_counter() - started), state.smoothed_loss, last, state.best["metric"],
                 "none yet" if state.best["value"] is None else f"{state.best['value']:.4g}",
                 best if best.exists() else "not written",
                 f"; {run.replaced_clips} clips replaced because their file was bad (rank 0)"
                 if run.replaced_clips else "")
        from vidssl.train.bad_files import summarize_bad_files

        summary = summarize_bad_files(run.skipped.files.values(), len(getattr(run.skipped.dataset, "entries", ())))
        if summary:
            log.warning(summary)
        if run.skipped.files:
            log.warning("%d bad files skipped in this run, listed with their reasons in %s",
                        len(run.skipped.files), run.skipped.csv_path)

    def _summary(self, run: _Run, *, interrupted: bool) -> dict[str, Any]:
        return {"step": run.state.step, "loss": run.state.smoothed_loss, "best": run.state.best,
                "interrupted": interrupted, "checkpoint": str(self.run_dir.last)}
