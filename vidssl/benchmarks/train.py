"""Training speed and memory: forward+backward clips/s and peak memory per encoder or per task step.

    python tools/benchmark.py suite=train                          # every video encoder, 16×112×112, batch 8
    python tools/benchmark.py suite=train encoders=[r3d_18] precisions=[bf16] batch_size=16
    python tools/benchmark.py suite=train task=memdpc              # one training step of a task, as configured
    python tools/benchmark.py suite=train task=dpc overrides=[task.data.transform.size=128,...]   # paper shape
    python tools/benchmark.py suite=train task=memdpc_paper batch_size=4 official=DIR   # + the authors' model
    python tools/benchmark.py suite=train task=vjepa official=DIR   # + the authors' V-JEPA step (vjepa2 checkout)

``official=DIR`` (a checkout of TengdaHan/DPC or TengdaHan/MemDPC, matching the task) adds a row per precision
for the authors' model (`DPC_RNN`, `MemDPC_BD`) built with the task config's shape, trained on the same batch
with the same optimiser; the suite runs without it.

Encoders get random clips ``B×3×frames×size×size`` and the loss ``mean(pool(features)²)``. A task gets a
batch that ``VideoDataset`` cuts with its own ``data`` config from a few synthetic videos, then the trainer's step (`vidssl.train.step.TrainStep`: forward, backward, an AdamW
step and its ``on_train_step_end``; its ``on_train_step_start``, if any, runs once before the timed steps,
with a loader of that one batch).
Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, and on the CPU the growth of the process's
resident memory during the timed steps (sampled every 2 ms).
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from vidssl.benchmarks.memory import PeakRSS
from vidssl.configs import CONFIG_DIR
from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.formats import synthetic
from vidssl.datasets.synthetic import make_synthetic
from vidssl.encoders import pool
from vidssl.tasks.dpc import DPC
from vidssl.tasks.memdpc import MemDPC
from vidssl.train.step import PRECISIONS, TrainStep, move_batch, to_channels_last

VIDEO_ENCODERS = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "r2d3d_18")


def _compose(overrides: Sequence[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("pretrain", overrides=["dataset.root=unused", "trainer.out_dir=unused", *overrides])


def task_batch(data: dict[str, Any], batch_size: int, seed: int = 0) -> dict[str, Any]:
    """A batch of ``batch_size`` clips cut by ``VideoDataset`` with a task's ``data`` config (its sampler,
    transform, views and audio) from synthetic videos long enough for the sampler, written to a temporary
    folder (128×128 H.264 + AAC, `vidssl.datasets.synthetic`)."""
    span = data["sampler"].span
    with tempfile.TemporaryDirectory(prefix="vidssl_benchmark_") as folder:
        root = make_synthetic(folder, num_videos=batch_size, num_classes=1, seed=seed, min_frames=span,
                              max_frames=span, davis_train_per_class=0)
        dataset = VideoDataset(root=root, entries=synthetic(root, split=None), seed=seed, **data)
        return default_collate([dataset[i] for i in range(batch_size)])


def _time_steps(step: Callable[[], None], *, steps: int, warmup: int,
                device: torch.device) -> tuple[float, int, float]:
    """Seconds per step (mean over ``steps`` after ``warmup``), peak memory in bytes (warmup included), and
    this process's CPU seconds per step (robust to other jobs on a shared CPU; with one intra-op thread
    it is the compute time)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        cpu_seconds = (time.process_time() - cpu_start) / steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss.peak
    return seconds, peak, cpu_seconds


def _build(name: str, task: str | None, overrides: Sequence[str], batch_size: int, frames: int,
           size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The module to train and its batch: an encoder with random clips, or a task with its own batch."""
    if task is None:
        encoder = instantiate(_compose([f"encoder={name}", *overrides]).encoder)
        return encoder, {"video": torch.randn(batch_size, 3, frames, size, size)}
    cfg = _compose([f"task={task}", *overrides])
    model = instantiate(cfg.task.model)
    return model, task_batch(instantiate(cfg.task.data, _convert_="all"), batch_size)


def measure(*, name: str, task: str | None, overrides: Sequence[str], batch_size: int, frames: int, size: int,
            precision: str, steps: int, warmup: int, channels_last: bool, device: str) -> dict[str, Any]:
    """One row: build, warm up and time one (encoder or task, precision) in this process."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model, batch = _build(name, task, overrides, batch_size, frames, size)
    model.to(dev).train()
    if channels_last:
        to_channels_last(model)
    batch = move_batch(batch, dev, channels_last)  # once: the step's own move is then a no-op
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if task is not None:
        start = getattr(model, "on_train_step_start", None)
        if start is not None:  # untimed, before the steps: e.g. SeLaVi's first relabelling, over this batch
            rows = [{k: v[i] for k, v in batch.items() if torch.is_tensor(v)} for i in range(len(batch["video"]))]
            start(0, 1, functools.partial(DataLoader, rows, batch_size=len(rows)))
        # The trainer's own step: forward, backward, AdamW step and the task's hook (as step 1 of 1000).
        train_step = TrainStep(model, optimizer, device=dev, precision=precision, channels_last=channels_last,
                               max_steps=1000)

        def step() -> None:
            train_step(batch, 1)
    else:
        dtype = PRECISIONS[precision]

        def step() -> None:  # an encoder alone: forward and backward
            with torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext():
                loss = pool(model(batch["video"])).float().square().mean()
            loss.backward()
            optimizer.zero_grad(set_to_none=True)

    seconds, peak, cpu_seconds = _time_steps(step, steps=steps, warmup=warmup, device=dev)
    clips = batch["video"].shape[0]
    return {
        "encoder": type(model.encoder).__name__ if task is not None else name, "task": task or "-",
        "input": "x".join(str(s) for s in batch["video"].shape[1:]), "batch": clips, "precision": precision,
        "device": dev.type, "clips_per_s": round(clips / seconds, 2), "step_s": round(seconds, 3),
        "cpu_step_s": round(cpu_seconds, 3), "peak_mem_mb": round(peak / 2**20, 1),
    }


OFFICIAL_MODELS = {DPC: "dpc", MemDPC: "memdpc"}  # the tasks whose authors' model the benchmark can time


def _official_model(cfg: Any, checkout: Path) -> tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor]]:
    """The authors' model for a DPC/MemDPC task config, imported from `checkout` at run time, and its loss.

    Shims, in this (child) process only: `.cuda()` is a no-op on the CPU, matplotlib (imported by MemDPC's
    utils for plotting) is stubbed when absent, and MemDPC's top-k accuracy gets `.reshape` for today's torch.
    """
    kind = OFFICIAL_MODELS.get(get_class(cfg.task.model._target_))
    if kind is None:
        raise ValueError(f"official=...: no official model for {cfg.task.model._target_}; "
                         f"use a task of {sorted(cls.__name__ for cls in OFFICIAL_MODELS)}")
    if cfg.encoder._target_ != "vidssl.encoders.video.r2d3d_18" or cfg.encoder.get("base_width", 64) != 64:
        raise ValueError("official=...: the authors' model is R2D3D-18 at width 64; benchmark that encoder")
    if not checkout.is_dir():
        raise FileNotFoundError(f"official={checkout}: not a directory")
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    data, model_cfg = cfg.task.data, cfg.task.model
    shape = dict(sample_size=data.transform.size, num_seq=data.sampler.num_seq, seq_len=data.sampler.seq_len,
                 pred_step=model_cfg.pred_step, network="resnet18")
    if kind == "dpc":
        sys.path[:0] = [str(checkout / "backbone"), str(checkout / "dpc")]
        from model_3d import DPC_RNN

        def dpc_loss(model: nn.Module, block: Tensor) -> Tensor:  # dpc/main.py: the mask's positive per row
            score, mask = model(block)
            rows = score.shape[0] * score.shape[1] * score.shape[2]
            target = (mask == 1).contiguous().view(rows, -1).to(int).argmax(dim=1)
            return nn.functional.cross_entropy(score.view(rows, -1), target)

        return DPC_RNN(**shape), dpc_loss
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        stub = types.ModuleType("matplotlib")
        stub.pyplot = types.ModuleType("matplotlib.pyplot")
        stub.use = stub.pyplot.switch_backend = lambda *args, **kwargs: None
        sys.modules.update({"matplotlib": stub, "matplotlib.pyplot": stub.pyplot})
    sys.path[:0] = [str(checkout), str(checkout / "memdpc")]
    import model as memdpc_model

    def topk(output: Tensor, target: Tensor, topk: Sequence[int] = (1,)) -> list[Tensor]:
        _, pred = output.topk(max(topk), 1, True, True)
        correct = pred.t().eq(target.view(1, -1).expand_as(pred.t()))
        return [correct[:k].reshape(-1).float().sum(0) / target.size(0) for k in topk]

    memdpc_model.calc_topk_accuracy = topk
    model = memdpc_model.MemDPC_BD(**shape, mem_size=model_cfg.memory_size)
    return model, lambda m, block: m(block)[0]


def measure_official(*, task: str, official: str, overrides: Sequence[str], batch_size: int, precision: str,
                     steps: int, warmup: int, channels_last: bool, device: str) -> dict[str, Any]:
    """One row for the authors' model: the task's batch (in their B×N×C×L×H×W layout), forward, backward
    and the same AdamW step as `measure`."""
    dev = torch.device(device)
    torch.manual_seed(0)
    cfg = _compose([f"task={task}", *overrides])
    batch = task_batch(instantiate(cfg.task.data, _convert_="all"), batch_size)
    if cfg.task.model._target_ == "vidssl.tasks.vjepa.VJEPA":  # the authors' V-JEPA step (vjepa_official.py)
        from vidssl.benchmarks.vjepa_official import official_step

        video = batch["video"].to(dev)
        seconds, peak, cpu_seconds = _time_steps(official_step(cfg, Path(official), video, dev, precision),
                                                 steps=steps, warmup=warmup, device=dev)
        return {"encoder": "official", "task": f"{task} (official)", "input": "x".join(str(s) for s in video.shape[1:]),
                "batch": video.shape[0], "precision": precision, "device": dev.type,
                "clips_per_s": round(video.shape[0] / seconds, 2), "step_s": round(seconds, 3),
                "cpu_step_s": round(cpu_seconds, 3), "peak_mem_mb": round(peak / 2**20, 1)}
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print their settings
        model, loss_fn = _official_model(cfg, Path(official))
    model.to(dev).train()
    if channels_last:
        to_channels_last(model)
    num_seq = cfg.task.data.sampler.num_seq
    video = batch["video"]
    if video.ndim == 5:  # a task data config without ClipTransform.blocks
        video = rearrange(video, "b c (n l) h w -> b n c l h w", n=num_seq).contiguous()
    block = video.to(dev)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = PRECISIONS[precision]

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext():
            loss = loss_fn(model, block)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, peak, cpu_seconds = _time_steps(step, steps=steps, warmup=warmup, device=dev)
    return {
        "encoder": "official", "task": f"{task} (official)", "input": "x".join(str(s) for s in video.shape[1:]),
        "batch": video.shape[0], "precision": precision, "device": dev.type,
        "clips_per_s": round(video.shape[0] / seconds, 2), "step_s": round(seconds, 3),
        "cpu_step_s": round(cpu_seconds, 3), "peak_mem_mb": round(peak / 2**20, 1),
    }


def run(
    *,
    encoders: Sequence[str] = VIDEO_ENCODERS,
    task: str | None = None,
    overrides: Sequence[str] = (),
    batch_size: int = 8,
    frames: int = 16,
    size: int = 112,
    precisions: Sequence[str] = ("fp32", "bf16"),
    steps: int = 1,
    warmup: int | None = None,
    channels_last: bool = False,
    device: str = "auto",
    official: str | None = None,
) -> dict[str, Any]:
    """Benchmark encoders (``task=None``) or one training step of ``task``.

    Args:
        encoders: encoder config names (``vidssl/configs/encoder/<name>.yaml``); ignored when ``task`` is given.
        task: a task config name; its default encoder unless ``overrides`` has ``encoder=...``.
        overrides: Hydra overrides applied to the pretrain config (e.g. the paper's input shape).
        batch_size, frames, size: the encoder input ``batch_size×3×frames×size×size`` (``frames`` and
            ``size`` apply to encoders only; a task's clip shape comes from its data config).
        precisions: "fp32", "bf16", "fp16" (fp16 rows are skipped on the CPU).
        steps, warmup: timed and untimed iterations; warmup None means 2 on a GPU (cuDNN picks its
            kernels on the first calls) and 0 on the CPU, where one step takes seconds and its one-off
            setup is small beside it (so the default run stays within minutes on 2 cores).
        channels_last: channels-last weights and inputs.
        device: "auto", "cpu" or "cuda".
        official: a checkout of the authors' DPC or MemDPC code: also time their model on the same batch
            (a row per precision after the task's; DPC/MemDPC tasks with R2D3D-18 at width 64 only).
    Outputs: {"rows": [{encoder, task, input, batch, precision, device, clips_per_s, step_s, cpu_step_s,
        peak_mem_mb}]}.

    Each row runs in a child process, so one row's freed memory (which the CPU allocator keeps) cannot
    hide the next row's peak.
    """
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if warmup is None:
        warmup = 2 if dev == "cuda" else 0
    names = list(encoders) if task is None else [task]
    # A fork server: a fresh process that imports torch once and forks each row's child from itself.
    # Forking this process instead can deadlock (its OpenMP/CUDA state and threads do not survive a fork),
    # and spawning pays the torch import for every row.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    rows = []
    for name in names:
        for precision in precisions:
            if precision == "fp16" and dev != "cuda":
                continue  # fp16 autocast is a GPU mode
            options = dict(name=name, task=task, overrides=list(overrides), batch_size=batch_size, frames=frames,
                           size=size, precision=precision, steps=steps, warmup=warmup,
                           channels_last=channels_last, device=dev)
            with context.Pool(1) as child:
                rows.append(child.apply(measure, kwds=options))
            if official is not None and task is not None:
                options = {k: v for k, v in options.items() if k not in ("name", "frames", "size")}
                with context.Pool(1) as child:
                    rows.append(child.apply(measure_official, kwds={**options, "official": official}))
    return {"rows": rows}
