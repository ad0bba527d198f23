"""It really learns? CPC, DPC and MemDPC pretrained briefly on the synthetic corpus.

Each test runs the public command line (`tools/pretrain.py task=... encoder=r2d3d_18 ...`) in a
subprocess, reads the per-step training loss back from the run's TensorBoard events, rebuilds the task
at the random init the run started from (pretrain.py seeds with trainer.seed right before building it)
and with the trained weights, and compares the two:

- **the pretext task on the val split** (24 videos never trained on, 3 clips each, batches of 8 videos
  at one position, eval mode): the loss, and the accuracy of picking the true future block (every
  position of it) among all the batch's candidates (DPC/MemDPC: 8 clips × 2 steps × 2×2 positions = 64,
  chance 0.016; CPC: 16). **Asserted**, with margins set well inside what was measured;
- the downstream read-outs, **printed on every run** (`pytest -s`), asserted nowhere since they do not
  beat random init reliably: retrieval R@1/R@5 and a linear probe on the pooled encoder (3 clips per
  video: 72 queries, 168 gallery clips; chance R@1 0.125, R@5 0.50, top-1 0.125), and for DPC/MemDPC the
  papers' fine-tuning protocol (`vidssl.eval.finetune`: context read-out, batch norm, dropout 0.5, linear;
  the whole network trained with the official fine-tuning augmentation for FINETUNE_STEPS = 80 steps of
  batch 8 on the centre clip of each train video; a val video's class from the softmax averaged over its 3
  clips; chance 0.125). The evaluation clips are decoded once per test and shared by the trained and the
  random-init read-outs, which pays for most of the fine-tuning.

Settings: the task configs' synthetic defaults (5 blocks × 4 frames, stride 2, 64 px, pred_step 2,
cosine scores at temperature 0.1), R2D3D-18 at base_width 8, batch 8, AdamW lr 2e-3, 150 steps.

Measured (the shared 2-core machine, load 4-7 from other runs; the pretraining figures repeat exactly):

| run | train loss | val loss trained / random | val accuracy trained / random | R@1 | linear | finetune |
|---|---|---|---|---|---|---|
| dpc | 5.60 -> 2.11 | 2.23 / 4.51 (0.50) | 0.188 / 0.021 | 0.181 / 0.139 | 0.236 / 0.194 | 0.125 / 0.167 |
| memdpc | 11.60 -> 4.63 | 4.81 / 9.00 (0.53) | 0.165 / 0.016 | 0.181 / 0.139 | 0.111 / 0.194 | 0.250 / 0.208 |
| cpc | 3.82 -> 1.28 | 1.56 / 2.79 (0.56) | 0.361 / 0.076 | 0.111 / 0.139 | 0.167 / 0.194 | - |

The fine-tuning column is from the seeded fine-tuning (batches and dropout drawn from the evaluation
seed alone; 2026-11-29, 23:00 UTC, the whole file 265 s on a quiet machine). Before that fix the same
weights gave dpc 0.208 / 0.250 and memdpc 0.167 / 0.167 at 80 steps; at other lengths: 40 steps dpc
0.125 / 0.125, memdpc 0.250 / 0.250; 100 steps dpc 0.125 / 0.167, memdpc 0.250 / 0.333. Trained is
within one or two of the 24 val videos of random init either way, and on either side, so fine-tuning
is printed, not asserted.

The whole file, corpus included, run back to back with the version without fine-tuning (2026-11-29, load
2.3-5.0): 302.5 s against 305.8 s; its three pretraining runs took 189 s against 196 s, so the rest grew
from 110 s to 114 s. (At 100 fine-tuning steps it took 292 s against 239 s in a quieter pair: over the
45 s that `make test` can spare this file.)

Asserted: the training loss falls below 0.7 of its start, the val accuracy gains more than 0.10 over
the random init, the val loss is below 0.7 (CPC: 0.8) of the random init's, and the encoder changed. What is not
met (issue 4's retrieval criterion; the downstream read-outs at large) is discussed, with every run
tried, in docs/methods/predictive_coding.md.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import ConcatDataset, Dataset

from hydra.utils import instantiate

from vidssl.run import Checkpoint, load_encoder
from vidssl.datasets.dataset import VideoDataset, sample_seed
from vidssl.datasets.formats import synthetic
from vidssl.datasets.transforms import ClipTransform, EvalTransform
from vidssl.train.trainer import seed_everything
from vidssl.eval.finetune import ContextClassifier, PositionedSampler, context_readout, finetune
from vidssl.eval.retrieval import extract_features, linear_probe, retrieval_recall

REPO = Path(__file__).resolve().parents[2]
STEPS = 150
CLIP_POSITIONS = (0.0, 0.5, 1.0)  # where in each video its evaluation clips start (fraction of the slack)
FINETUNE_STEPS = 80  # of batch 8: ~11 epochs of the 56 training videos
# The official fine-tuning augmentation (vidssl/configs/evaluate.yaml's finetune.transform) at the test's 64 px.
FINETUNE_AUGMENT = ClipTransform(size=64, scale=(0.5, 1.0), ratio=(0.75, 4 / 3), color_jitter=0.5, hue=0.25,
                                 jitter_p=0.3)

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


def _clips(root: Path, split: str, *, num_frames: int = 16, stride: int = 2, transform=None,
           positions: tuple[float, ...] = CLIP_POSITIONS) -> list[list[dict]]:
    """Every video of `split` as 3 clips (start, middle, end; default: tools/evaluate.py's 16 frames at
    stride 2, 64 px, unaugmented): one list of samples per position, so a batch holds 8 different videos.
    Decoded once per test and shared by the trained and the random-init evaluations."""
    return [
        [sample for sample in VideoDataset(
            root=root,
            entries=synthetic(root, split=split),
            sampler=PositionedSampler(num_frames=num_frames, stride=stride, position=position),
            transform=transform or EvalTransform(size=64),
            seed=0,
        )]
        for position in positions
    ]


class _Augmented(Dataset):
    """Decoded uint8 clips, augmented afresh at every draw from a generator seeded by (epoch, index), as
    `VideoDataset` does; the fine-tuning's training set without decoding the videos again every epoch."""

    def __init__(self, samples: list[dict], transform: ClipTransform) -> None:
        self.samples, self.transform, self.epoch = samples, transform, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(sample_seed(0, self.epoch, index))
        return {**self.samples[index], "video": self.transform(self.samples[index]["video"], generator)}


def _tasks(run: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(trained task, the same task at the random init the run started from: pretrain.py seeds with
    trainer.seed right before building it)."""
    cfg = OmegaConf.load(run / "config.yaml")
    seed_everything(cfg.trainer.seed)
    initial = instantiate(cfg.task.model)
    trained = instantiate(cfg.task.model)
    trained.load_state_dict(Checkpoint.load(run).to_dict()["model"])
    return trained, initial


@torch.no_grad()
def _pretext(task: torch.nn.Module, clips: list[list[dict]]) -> dict[str, float]:
    """The pretext task on the val split (videos never trained on), eval mode: mean loss and accuracy of
    picking the true future block among the batch's candidates, over batches of 8 videos × 3 positions."""
    clips = ConcatDataset(clips)
    task.eval()
    losses, accuracies = [], []
    for batch in torch.utils.data.DataLoader(clips, batch_size=8, drop_last=True):
        out = task({"video": batch["video"]})
        losses.append(out["loss"].item())
        accuracies.append(out["accuracy"].item())
    return {"val_loss": sum(losses) / len(losses), "val_accuracy": sum(accuracies) / len(accuracies)}


def _downstream(task: torch.nn.Module, data: dict[str, list[list[dict]]]) -> dict[str, float]:
    """Retrieval R@1/R@5 and linear probe top-1 on the pooled encoder; for a task with a ConvGRU (DPC,
    MemDPC) the papers' fine-tuning too, on a copy of the task (`vidssl.eval.finetune`: context read-out,
    batch norm, dropout 0.5, linear, the whole network trained for FINETUNE_STEPS steps of batch 8 with
    Adam lr 1e-3; a video's class from the softmax averaged over its 3 val clips)."""
    train, val = ConcatDataset(data["train"]), ConcatDataset(data["val"])
    train_feats, train_labels = extract_features(task.encoder, train, batch_size=16)
    test_feats, test_labels = extract_features(task.encoder, val, batch_size=16)
    metrics = retrieval_recall(train_feats, train_labels, test_feats, test_labels, ks=(1, 5))
    metrics["linear"] = linear_probe(train_feats, train_labels, test_feats, test_labels)["top1"]
    if hasattr(task, "aggregator"):
        torch.manual_seed(0)  # the classifier's init and the dropout draws
        readout = context_readout(copy.deepcopy(task.encoder), 4, Checkpoint.of_task(task, {}))
        model = ContextClassifier(readout, num_classes=int(train_labels.max()) + 1)
        metrics["finetune"] = finetune(model, _Augmented(data["finetune_train"], FINETUNE_AUGMENT), data["val"],
                                       steps=FINETUNE_STEPS, batch_size=8)["top1"]
    return {k: round(v, 3) for k, v in metrics.items()}


def _check_learns(task: str, root: Path, run: Path, *, steps: int, max_loss_ratio: float,
                  min_accuracy_gain: float, max_val_loss_ratio: float) -> None:
    seconds = _pretrain(task, root, run, steps)
    losses = _losses(run)
    assert len(losses) == steps
    start, end = sum(losses[:3]) / 3, sum(losses[-10:]) / 10
    trained, initial = _tasks(run)
    encoder_cfg = OmegaConf.load(run / "config.yaml").encoder
    assert all(torch.equal(a, b) for a, b in zip(trained.encoder.state_dict().values(),
                                                  load_encoder(run, encoder_cfg).state_dict().values()))
    seq_len, stride = 4, 2  # the task configs' synthetic layout (5 blocks × 4 frames at stride 2)
    pretext_clips = _clips(root, "val", num_frames=trained.num_seq * seq_len, stride=stride)
    pretext_trained, pretext_random = _pretext(trained, pretext_clips), _pretext(initial, pretext_clips)
    evaluation = time.perf_counter()
    data = {"train": _clips(root, "train"), "val": _clips(root, "val")}
    # Fine-tuning trains on the centre clip of every train video, decoded once, augmented at every draw.
    data["finetune_train"] = _clips(root, "train", transform=lambda frames, generator: frames, positions=(0.5,))[0]
    down_trained, down_random = _downstream(trained, data), _downstream(initial, data)
    evaluation = time.perf_counter() - evaluation
    # Printed on every run (pytest -s); only the pretext margins and the training loss are asserted.
    print(f"{task}: {steps} steps in {seconds:.0f} s, train loss {start:.3f} -> {end:.3f}; val pretext "
          f"trained {pretext_trained} vs random init {pretext_random}; downstream ({evaluation:.0f} s) trained "
          f"{down_trained} vs random init {down_random} (chance: R@1 0.125, R@5 0.50, linear/finetune 0.125)")
    assert end < max_loss_ratio * start, f"{task}: the training loss fell only from {start:.3f} to {end:.3f}"
    gain = pretext_trained["val_accuracy"] - pretext_random["val_accuracy"]
    assert gain > min_accuracy_gain, f"{task}: val future-prediction accuracy gained only {gain:.3f}"
    ratio = pretext_trained["val_loss"] / pretext_random["val_loss"]
    assert ratio < max_val_loss_ratio, f"{task}: val loss is {ratio:.2f} of the random init's"
    changed = [
        name for name, value in trained.encoder.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, initial.encoder.state_dict()[name])
    ]
    assert changed, f"{task}: the checkpoint's encoder is identical to its random initialisation"


@pytest.mark.slow
def test_dpc_learns(synthetic_root: Path, tmp_path: Path) -> None:
    _check_learns("dpc", synthetic_root, tmp_path / "dpc", steps=STEPS, max_loss_ratio=0.7,
                  min_accuracy_gain=0.10, max_val_loss_ratio=0.7)


@pytest.mark.slow
def test_memdpc_learns(synthetic_root: Path, tmp_path: Path) -> None:
    _check_learns("memdpc", synthetic_root, tmp_path / "memdpc", steps=STEPS, max_loss_ratio=0.7,
                  min_accuracy_gain=0.10, max_val_loss_ratio=0.7)


@pytest.mark.slow
def test_cpc_learns(synthetic_root: Path, tmp_path: Path) -> None:
    _check_learns("cpc", synthetic_root, tmp_path / "cpc", steps=STEPS, max_loss_ratio=0.7,
                  min_accuracy_gain=0.10, max_val_loss_ratio=0.8)
