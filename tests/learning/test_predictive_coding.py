"""It really learns? CPC, DPC and MemDPC pretrained briefly on the synthetic corpus.

Each test runs the public command line (`tools/pretrain.py task=... encoder=r2d3d_18 ...`) in a
subprocess, reads the per-step training loss back from the run's TensorBoard events, then evaluates
the run's checkpoint with `vidssl.eval.retrieval.evaluate_checkpoint` (val clips query train clips by
cosine similarity; R@k = a same-class clip among the k nearest, the MemDPC/CoCLR protocol) against
`checkpoint=random` (the same encoder at its fixed-seed random initialisation, the run's initial
encoder). To make the retrieval numbers less noisy than one centred clip per video (24 queries, one
query = 0.042), every video gives 3 evaluation clips (16 frames at stride 2, 64 px, at the start,
middle and end of the video): 72 queries, a gallery of 168 clips.

Settings: the task configs' synthetic defaults (5 blocks × 4 frames, stride 2, 64 px, pred_step 2,
cosine scores at temperature 0.1), R2D3D-18 at base_width 8, batch 8, AdamW lr 2e-3, 150 steps.

What is asserted (hard): the run completes, logs one loss per step, the loss falls below 0.7 of its
start (measured: 0.31-0.37 of it in every run: dpc 5.6 -> 1.7-2.1, memdpc 11.6 -> 4.6, cpc 3.7-3.8 ->
1.3-1.4), and the evaluated encoder is the trained one (its weights differ from the random init).

What is NOT met, so NOT asserted — issue 4's retrieval criterion. Chance on this corpus is R@1 = 0.125
and R@5 = 0.50 (7 of the 56 train videos share a query's class). Measured on the shared 2-core
machine (loaded by colleagues' runs), 3-clip protocol unless noted:

| run | R@1 trained / random | R@5 trained / random |
|---|---|---|
| dpc, 150 steps | 0.194 / 0.139 | 0.514 / 0.472 |
| memdpc, 150 steps | 0.167 / 0.139 | 0.500 / 0.472 |
| cpc, 150 steps | 0.153 / 0.139 | 0.389 / 0.472 |
| dpc, 150 steps, strong colour jitter + grayscale 0.5 | 0.153 / 0.139 | 0.444 / 0.472 |
| dpc, 250 steps, same augmentation | 0.139 / 0.139 | 0.556 / 0.472 |
| cpc, 150 steps, same augmentation | 0.125 / 0.139 | 0.569 / 0.472 |
| dpc, 150 steps, 5 clips per video | 0.200 / 0.158 | 0.467 / 0.367 |

Trained R@1 stays within 0.00-0.07 of chance (random init: 0.139) and of random init; trained R@5 is at chance (0.44-0.58
vs 0.50). The earlier "R@5 gain over random init" (+0.17 to +0.33 with one centred clip) came from the
random encoder's R@5 being *below* chance (0.29) on that single, noisy set of 24 queries, not from
class information: a one-frame shift of the evaluation clips moved random init's R@5 from 0.29 to 0.42.
A second round (frame-residual input, same-video hard negatives, a corpus variant with shared
backgrounds, 1000-step runs, a 5-clip protocol) is in docs/methods/predictive_coding.md: none gave a
gain that survived a second seed. The numbers are printed by every run (`pytest -s`) so the gap can be
tracked. Wall time of this file:
7 min 22 s on the 2 cores under load ~7 from other runs (4 min 53 s user CPU), corpus included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import ConcatDataset

from vidssl.checkpoint import load_encoder
from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.formats import synthetic
from vidssl.datasets.transforms import EvalTransform
from vidssl.eval.retrieval import evaluate_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 150
CLIP_POSITIONS = (0.0, 0.5, 1.0)  # where in each video its evaluation clips start (fraction of the slack)

# Shared by the three runs: a narrow R2D3D-18 and short warmup so that a few hundred CPU steps suffice.
COMMON = [
    "encoder=r2d3d_18",
    "encoder.base_width=8",
    "trainer.batch_size=8",
    "trainer.num_workers=2",
    "trainer.warmup_steps=10",
    "trainer.log_every=1",
    "trainer.checkpoint_every=1000",
    "trainer.progress=false",
    "trainer.device=cpu",
    "optim.lr=2e-3",
]


@dataclass(frozen=True)
class PositionedClipSampler:
    """`num_frames` frames `stride` apart, starting at `position` (0: first frame, 1: last possible start).

    A deterministic sampler (the dataset's sampler contract) for several evaluation clips per video.
    """

    num_frames: int
    stride: int
    position: float

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        if num_frames < self.span:
            raise ValueError(f"an evaluation clip needs {self.span} frames but the video has {num_frames}")
        start = round(self.position * (num_frames - self.span))
        return [start + i * self.stride for i in range(self.num_frames)]


def _pretrain(task: str, root: Path, run: Path, steps: int, *overrides: str) -> float:
    """Run tools/pretrain.py; return its wall-clock seconds."""
    command = [
        sys.executable,
        "tools/pretrain.py",
        f"task={task}",
        "dataset=synthetic",
        f"dataset.root={root}",
        f"trainer.max_steps={steps}",
        f"trainer.out_dir={run}",
        *COMMON,
        *overrides,
    ]
    # One intra-op thread per process: decoding (in the workers) costs more than the step itself, and
    # with two intra-op threads beside the workers the 2 cores were oversubscribed (a step measured
    # ~5x slower on this machine).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pretrain failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return time.perf_counter() - start


def _losses(run: Path) -> list[float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def _clips(root: Path, split: str) -> ConcatDataset:
    """Every video of `split` as 3 evaluation clips (tools/evaluate.py's 16 frames, stride 2, 64 px)."""
    return ConcatDataset(
        VideoDataset(
            root=root,
            entries=synthetic(root, split=split),
            sampler=PositionedClipSampler(num_frames=16, stride=2, position=position),
            transform=EvalTransform(size=64),
            seed=0,
        )
        for position in CLIP_POSITIONS
    )


def _recall(encoder: torch.nn.Module, root: Path) -> dict[str, float]:
    return evaluate_checkpoint(
        metric="retrieval", encoder=encoder, train_set=_clips(root, "train"), test_set=_clips(root, "val"),
        batch_size=16,
    )


def _check_learns(task: str, root: Path, run: Path, *, steps: int, max_loss_ratio: float) -> None:
    seconds = _pretrain(task, root, run, steps)
    losses = _losses(run)
    assert len(losses) == steps
    start, end = sum(losses[:3]) / 3, sum(losses[-10:]) / 10
    encoder_cfg = OmegaConf.load(run / "config.yaml").encoder
    trained_encoder = load_encoder(run, encoder_cfg)
    random_encoder = load_encoder("random", encoder_cfg)
    trained, random = _recall(trained_encoder, root), _recall(random_encoder, root)
    # Reported, not asserted: see the module docstring (R@1 is not reliably above chance/random init).
    print(f"{task}: {steps} steps in {seconds:.0f} s, loss {start:.3f} -> {end:.3f}, "
          f"trained {trained} vs random {random} (chance R@1 0.125, R@5 0.50)")
    assert end < max_loss_ratio * start, f"{task}: the training loss fell only from {start:.3f} to {end:.3f}"
    changed = [
        name for name, value in trained_encoder.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, random_encoder.state_dict()[name])
    ]
    assert changed, f"{task}: the checkpoint's encoder is identical to its random initialisation"


@pytest.mark.slow
def test_dpc_learns(synthetic_root: Path, tmp_path: Path) -> None:
    _check_learns("dpc", synthetic_root, tmp_path / "dpc", steps=STEPS, max_loss_ratio=0.7)


@pytest.mark.slow
def test_memdpc_learns(synthetic_root: Path, tmp_path: Path) -> None:
    _check_learns("memdpc", synthetic_root, tmp_path / "memdpc", steps=STEPS, max_loss_ratio=0.7)


@pytest.mark.slow
def test_cpc_learns(synthetic_root: Path, tmp_path: Path) -> None:
    _check_learns("cpc", synthetic_root, tmp_path / "cpc", steps=STEPS, max_loss_ratio=0.7)
