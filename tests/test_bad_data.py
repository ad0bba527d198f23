"""Bad files in real use: evaluation drops them (never substitutes another clip) and counts them."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from vidssl.datasets.dataset import BadSampleError, VideoDataset, collate_kept
from vidssl.datasets.formats import VideoEntry
from vidssl.datasets.sampling import ClipSampler
from vidssl.datasets.transforms import EvalTransform, LogMel
from vidssl.train.trainer import Trainer
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
    from vidssl.app import benchmark  # what tools/benchmark.py runs

    monkeypatch.chdir(tmp_path)
    small = ["suite=sinkhorn", "n=64", "k=4", "iterations=[3]", "dtypes=[float32]", "scales=[1.0]", "repeats=1",
             "task_step=false"]
    with pytest.raises(SystemExit, match="out=DIR is required"):
        benchmark.main(small)
    benchmark.main([*small, f"out={tmp_path / 'bench'}"])
    result = json.loads((tmp_path / "bench" / "benchmark_sinkhorn.json").read_text())
    assert result["suite"] == "sinkhorn" and (tmp_path / "bench" / "benchmark_sinkhorn.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # nothing in the working directory


# ---- training: each bad file decided once, logged once, counted cumulatively ---------------------------


def write_silent_video(path: Path, frames: int) -> Path:
    """A tiny real H.264 file without an audio stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(frames):
            image = np.full((32, 32, 3), 20 * t % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def mixed(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[VideoEntry]]:
    """4 good synthetic videos, then empty, truncated, renamed-text (a trimmed row) and too-short files."""
    root = tmp_path_factory.mktemp("mixed")
    with open(synthetic_root / "manifest.csv", newline="") as f:
        good = [r["path"] for r in csv.DictReader(f)][:4]
    for i, path in enumerate(good):
        shutil.copy(synthetic_root / path, root / f"good{i}.mp4")
    (root / "empty.mp4").write_bytes(b"")
    data = (root / "good0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 4])
    (root / "notes.mp4").write_text("this is a text file renamed to .mp4\n")
    write_silent_video(root / "short.mp4", frames=3)
    entries = [VideoEntry(f"good{i}.mp4", label=0) for i in range(4)] + [
        VideoEntry("empty.mp4", label=0), VideoEntry("truncated.mp4", label=0),
        VideoEntry("notes.mp4", label=0, start=1.0, end=2.0), VideoEntry("short.mp4", label=0)]
    return root, entries


class _MeanTask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": self.encoder(batch["video"].mean(dim=(2, 3, 4))).pow(2).mean()}


def test_training_logs_each_bad_file_once_and_counts_cumulatively(mixed, tmp_path: Path, caplog):
    root, entries = mixed
    dataset = VideoDataset(root=root, entries=entries, sampler=ClipSampler(num_frames=8, stride=2),
                           transform=EvalTransform(size=16))
    run = tmp_path / "run"
    # 8 entries, batches of 4: 2 steps an epoch, so 10 steps are 5 epochs, each with 2 fresh workers
    trainer = Trainer(max_steps=10, batch_size=4, out_dir=run, num_workers=2, checkpoint_every=10, log_every=2,
                      seed=0, progress=False)
    with caplog.at_level("WARNING"):
        trainer.fit(_MeanTask(), dataset, lambda params: torch.optim.SGD(params, lr=0.01))
    bad = ["empty.mp4", "truncated.mp4", "notes.mp4", "short.mp4"]
    messages = [r.getMessage() for r in caplog.records]
    for name in bad:
        assert sum(m.startswith(f"skipping bad video {name}") for m in messages) == 1, (name, messages)
    assert any("notes.mp4 [1-2 s]:" in m for m in messages)  # the segment of a trimmed row
    assert any("4 bad files skipped in this run" in m and "skipped.csv" in m for m in messages)
    with open(run / "skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["path"] for r in rows) == sorted(bad) and all(r["reason"] for r in rows)
    assert next(r for r in rows if r["path"] == "notes.mp4")["segment"] == "1-2 s"
    with open(run / "scalars.csv", newline="") as f:
        counts = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "train/skipped_videos"]
    assert counts == sorted(counts) and counts[-1] == 4  # cumulative, never restarting per epoch or worker
    assert set(bad) <= set(dataset.failures)  # known to the next epochs' workers: not decoded again


def test_index_sets_aside_silent_and_short_files_up_front(mixed, synthetic_root: Path, tmp_path: Path, caplog):
    root, _ = mixed
    write_silent_video(root / "silent.mp4", frames=40)
    entries = [VideoEntry(n, label=0) for n in ("good0.mp4", "good1.mp4", "silent.mp4", "short.mp4")]
    with caplog.at_level("WARNING"):
        dataset = VideoDataset(root=root, entries=entries, sampler=ClipSampler(num_frames=8, stride=2),
                               transform=EvalTransform(size=16), audio=LogMel(n_mels=16),
                               index=tmp_path / "train.index.json")
    assert set(dataset.failures) == {"silent.mp4", "short.mp4"}
    lines = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(lines) == 1 and "2 of 4" in lines[0] and "1 too short" in lines[0] and "1 without audio" in lines[0]
    with pytest.raises(BadSampleError, match="loader.require_audio=false"):
        VideoDataset(root=root, entries=[VideoEntry("silent.mp4", label=0)], sampler=ClipSampler(num_frames=8),
                     transform=EvalTransform(size=16), audio=LogMel(n_mels=16), index=tmp_path / "s.index.json")
    lenient = VideoDataset(root=root, entries=[VideoEntry("silent.mp4", label=0)], sampler=ClipSampler(num_frames=8),
                           transform=EvalTransform(size=16), audio=LogMel(n_mels=16), require_audio=False,
                           index=tmp_path / "s.index.json")
    assert not lenient.failures and lenient[0]["has_audio"] is False


# ---- check_dataset: cleans what it finds ------------------------------------------------------------


def test_check_dataset_drops_missing_short_silent_and_overrunning_rows(mixed, tmp_path: Path):
    root, _ = mixed
    write_silent_video(root / "quiet.mp4", frames=40)
    manifest = tmp_path / "all.csv"
    rows = [("good0.mp4", "dog", "", ""), ("good1.mp4", "cat", "0.5", "2.0"), ("good2.mp4", "cat", "1.0", "99"),
            ("gone.mp4", "dog", "", ""), ("short.mp4", "cat", "", ""), ("quiet.mp4", "dog", "", ""),
            ("empty.mp4", "dog", "", "")]
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "start", "end"), *rows])
    out = tmp_path / "clean" / "clean.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "tools/check_dataset.py"), "dataset=csv", f"dataset.root={root}",
         f"dataset.manifest={manifest}", f"out={out}", "workers=1", "min_frames=8", "require_audio=true"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    with out.open(newline="") as f:
        kept = [(r["path"], r["label"]) for r in csv.DictReader(f)]
    assert kept == [("good0.mp4", "1"), ("good1.mp4", "0")]  # names become indices (sorted: cat 0, dog 1)
    with (out.parent / "classes.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [["index", "name"], ["0", "cat"], ["1", "dog"]]
    report = json.loads((out.parent / "clean.report.json").read_text())
    reasons = {d["path"]: d["reason"] for d in report["dropped_entries"]}
    assert set(reasons) == {"good2.mp4", "gone.mp4", "short.mp4", "quiet.mp4", "empty.mp4"}
    assert "past the end" in reasons["good2.mp4"] and "does not exist" in reasons["gone.mp4"]
    assert "min_frames=8" in reasons["short.mp4"] and "audio" in reasons["quiet.mp4"]
    assert "DROPPED gone.mp4" in run.stdout and "DROPPED good2.mp4 [1-99 s]" in run.stdout


def test_csv_skip_missing_drops_rows_whose_file_is_absent(mixed, tmp_path: Path):
    from vidssl.datasets.formats import MissingFilesError, csv_manifest

    root, _ = mixed
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\ngood0.mp4,0\ngone.mp4,1\n")
    with pytest.raises(MissingFilesError, match="gone.mp4"):
        csv_manifest(root, manifest=manifest)
    assert [e.path for e in csv_manifest(root, manifest=manifest, skip_missing=True)] == ["good0.mp4"]


def _merge_on_rank(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from vidssl.train.trainer import SkippedFiles

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        dataset = type("D", (), {"failures": {}})()
        files = SkippedFiles(Path(out_dir) / "skipped.csv", dataset, resumed=False)
        # rank 0 met a.mp4 in two workers; rank 1 met a.mp4 too and a trimmed row of b.mp4
        batches = [["a.mp4\t\tVideoDecodeError: empty", "a.mp4\t\tVideoDecodeError: empty"],
                   ["a.mp4\t\tVideoDecodeError: empty\nb.mp4\t3-5 s\tClipTooShortError: 4 frames"]]
        files.note({"skipped_files": batches[rank]})
        files.merge(2, rank == 0)
        files.merge(2, rank == 0)  # nothing new: nothing logged again
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(
            {"files": sorted(f"{p}|{s}" for p, s in files.files), "failures": sorted(dataset.failures)}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_each_bad_file_and_rank0_lists_it_once(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_merge_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1] == {"files": ["a.mp4|", "b.mp4|3-5 s"], "failures": ["a.mp4", "b.mp4"]}
    with open(tmp_path / "skipped.csv", newline="") as f:
        assert [tuple(r) for r in csv.reader(f)] == [("path", "segment", "reason"),
                                                     ("a.mp4", "", "VideoDecodeError: empty"),
                                                     ("b.mp4", "3-5 s", "ClipTooShortError: 4 frames")]


def test_a_resumed_run_continues_its_skipped_list_without_logging_again(mixed, tmp_path: Path, caplog):
    root, entries = mixed

    def fit(steps: int) -> VideoDataset:
        dataset = VideoDataset(root=root, entries=entries, sampler=ClipSampler(num_frames=8, stride=2),
                               transform=EvalTransform(size=16))
        Trainer(max_steps=steps, batch_size=4, out_dir=tmp_path / "run", num_workers=0, checkpoint_every=2,
                log_every=2, seed=0, progress=False).fit(_MeanTask(), dataset, lambda p: torch.optim.SGD(p, lr=0.01))
        return dataset

    fit(4)
    caplog.clear()
    with caplog.at_level("WARNING"):
        resumed = fit(8)
    assert not [r for r in caplog.records if r.getMessage().startswith("skipping bad video")]
    assert {"empty.mp4", "truncated.mp4", "notes.mp4", "short.mp4"} <= set(resumed.failures)
    with open(tmp_path / "run" / "skipped.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
