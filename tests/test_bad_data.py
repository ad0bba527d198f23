"""Bad files in real use: evaluation drops them (never substitutes another clip) and counts them."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vidssl.datasets.dataset import VideoDataset, collate_kept
from vidssl.datasets.formats import VideoEntry
from vidssl.datasets.sampling import ClipSampler
from vidssl.datasets.transforms import EvalTransform
from vidssl.eval.retrieval import evaluate_checkpoint, extract_clips

REPO = Path(__file__).resolve().parents[1]


class _MeanEncoder(nn.Module):
    """B×3×T×H×W → B×3×1×1×1: the clip's mean colour, so every video's feature tells which clip it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return (video * self.scale).mean(dim=(2, 3, 4), keepdim=True)


@pytest.fixture(scope="module")
def corpus(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the synthetic corpus whose 8th val entry (index 7) is truncated and 2nd train entry is text."""
    root = tmp_path_factory.mktemp("bad_corpus")
    shutil.copytree(synthetic_root, root, dirs_exist_ok=True)
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [r["path"] for r in rows if r["split"] == "val"]
    train = [r["path"] for r in rows if r["split"] == "train"]
    good = (root / val[7]).read_bytes()
    (root / val[7]).write_bytes(good[: len(good) // 3])
    (root / train[1]).write_text("this is not a video\n")
    return root


def _split(root: Path, split: str) -> VideoDataset:
    from vidssl.datasets.formats import synthetic

    return VideoDataset(root=root, entries=synthetic(root=root, split=split),
                        sampler=ClipSampler(num_frames=4, stride=2, random=False), transform=EvalTransform(size=32),
                        substitute=False)


def test_evaluation_drops_a_bad_clip_instead_of_substituting_another(corpus: Path, caplog):
    val = _split(corpus, "val")
    marker = val[7]
    assert marker["index"] == 7 and "error" in marker and "video" not in marker  # not entry 6's clip
    assert val[6]["index"] == 6 and "video" in val[6]
    batch = collate_kept([val[6], val[7], val[8]])
    assert batch["index"].tolist() == [6, 8] and [d[0] for d in batch["dropped"]] == [7]

    with caplog.at_level("WARNING"):
        clips = extract_clips(_MeanEncoder(), val, batch_size=4)
    assert 7 not in clips.indices.tolist() and clips.indices.tolist() == [i for i in range(len(val)) if i != 7]
    assert [(index, path) for index, path, _ in clips.dropped] == [(7, val.entries[7].path)]
    assert clips.dropped[0][2]  # the decoder's reason
    # every feature is the clip of its own entry: entry 8's feature is not entry 7's nor 6's
    features = {i: f for i, f in zip(clips.indices.tolist(), clips.features)}
    assert torch.equal(features[8], _MeanEncoder()(val[8]["video"][None]).flatten())
    assert sum(val.entries[7].path in r.message for r in caplog.records) == 1  # logged once, with its reason


def test_evaluate_checkpoint_counts_used_and_dropped_clips(corpus: Path):
    metrics = evaluate_checkpoint(metric="retrieval", encoder=_MeanEncoder(), train_set=_split(corpus, "train"),
                                  test_set=_split(corpus, "val"), batch_size=8, ks=[1])
    train_total, val_total = len(_split(corpus, "train")), len(_split(corpus, "val"))
    assert metrics["train_used"] == train_total - 1 and metrics["train_dropped"] == 1
    assert metrics["test_used"] == val_total - 1 and metrics["test_dropped"] == 1


def test_evaluate_cli_writes_counts_under_a_required_out(corpus: Path, tmp_path: Path):
    args = [sys.executable, str(REPO / "tools/evaluate.py"), "metric=linear", "checkpoint=random",
            "encoder=r2d3d_18", "encoder.base_width=4", "dataset=synthetic", f"dataset.root={corpus}",
            "num_frames=4", "size=32", "batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    refused = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert refused.returncode != 0 and "out=" in refused.stderr
    out = tmp_path / "new" / "eval"
    done = subprocess.run([*args, f"out={out}"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_dropped"] == 1 and metrics["test_dropped"] == 1
    assert metrics["test_used"] == len(_split(corpus, "val")) - 1
    assert "evaluation drops bad video" in done.stdout + done.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_benchmark_requires_out_and_writes_under_it(tmp_path: Path, monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import benchmark

    monkeypatch.chdir(tmp_path)
    small = ["suite=sinkhorn", "n=64", "k=4", "iterations=[3]", "dtypes=[float32]", "scales=[1.0]", "repeats=1",
             "task_step=false"]
    with pytest.raises(SystemExit, match="out=DIR is required"):
        benchmark.main(small)
    benchmark.main([*small, f"out={tmp_path / 'bench'}"])
    result = json.loads((tmp_path / "bench" / "benchmark_sinkhorn.json").read_text())
    assert result["suite"] == "sinkhorn" and (tmp_path / "bench" / "benchmark_sinkhorn.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # nothing in the working directory
