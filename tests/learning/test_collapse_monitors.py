"""The collapse warning fires on a collapsing run and not on a healthy one (SimCLR on the synthetic corpus).

The same settings as the runs docs/internals.md ("Health monitors") reports, shortened: R2D3D-18 at
base width 8, 8 clips of 8 frames at 32×32 per step, 20 steps, logged every 5. Healthy: AdamW at lr 1e-3.
Collapsing: lr 10, which leaves the batch's 16 embeddings spanning about 3-4 directions
(``embedding_rank_fraction`` 0.26-0.34 at the logged steps, against 0.72-0.80 for the healthy run).
"""

from __future__ import annotations

import csv
import functools
import logging
from pathlib import Path

import pytest
import torch

from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.formats import synthetic
from vidssl.datasets.sampling import ClipSampler
from vidssl.datasets.transforms import ClipTransform
from vidssl.encoders.heads import MLPHead
from vidssl.encoders.video import r2d3d_18
from vidssl.train import Trainer, seed_everything
from vidssl.monitors import COLLAPSE_RULES
from vidssl.tasks.simclr import SimCLR

pytestmark = pytest.mark.slow


def _run(root: Path, out: Path, lr: float, caplog) -> tuple[list[str], dict[str, list[float]]]:
    dataset = VideoDataset(root=root, entries=synthetic(root, split="train"), views=2,
                           sampler=ClipSampler(num_frames=8, stride=2), transform=ClipTransform(size=32))
    seed_everything(0)
    task = SimCLR(encoder=r2d3d_18(base_width=8), head=functools.partial(MLPHead, hidden_dim=64), embed_dim=32)
    trainer = Trainer(max_steps=20, batch_size=8, out_dir=out, num_workers=0, log_every=5, warmup_steps=5,
                      checkpoint_every=20, progress=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vidssl.monitors"):
        trainer.fit(task, dataset, functools.partial(torch.optim.AdamW, lr=lr, weight_decay=0.05))
    warnings = [r.getMessage() for r in caplog.records if r.name == "vidssl.monitors"]
    series: dict[str, list[float]] = {}
    with (out / "scalars.csv").open() as f:
        for row in csv.DictReader(f):
            series.setdefault(row["name"], []).append(float(row["value"]))
    return warnings, series


def test_collapse_warning_fires_on_the_collapsing_run_only(synthetic_root, tmp_path, caplog):
    threshold = next(r.threshold for r in COLLAPSE_RULES if r.key == "embedding_rank_fraction")
    healthy, healthy_series = _run(synthetic_root, tmp_path / "healthy", 1e-3, caplog)
    collapsing, collapsing_series = _run(synthetic_root, tmp_path / "collapsing", 10.0, caplog)
    assert healthy == [], healthy
    assert min(healthy_series["train/embedding_rank_fraction"]) > threshold
    assert len(collapsing) == 1 and "embedding_rank_fraction" in collapsing[0], collapsing
    assert min(collapsing_series["train/embedding_rank_fraction"]) < threshold
