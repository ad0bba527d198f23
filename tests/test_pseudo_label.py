"""Pseudo-labelling: one row per clip, silent and broken videos handled, checkpoint round trip, the tool."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidssl.eval.clustering import evaluate_labels
from vidssl.eval.pseudo_label import (
    Labelling,
    balanced_kmeans,
    cluster_features,
    cluster_sizes,
    encoder_features,
    label_clips,
    labelling_dataset,
    random_task,
    representatives,
    task_from_checkpoint,
    write_labels_csv,
)
from vidssl.viz import save_mp4

REPO = Path(__file__).resolve().parents[1]

TASK_CFG = {
    "model": {
        "_target_": "vidssl.tasks.selavi.SeLaVi",
        "encoder": {"_target_": "vidssl.encoders.video.r2d3d_18", "base_width": 4},
        "audio_encoder": {"_target_": "vidssl.encoders.audio.audio_cnn", "base_width": 4, "in_channels": 1},
        "num_clusters": [3, 4],
        "head_hidden": 16,
    },
    "data": {
        "sampler": {"_target_": "vidssl.datasets.sampling.ClipSampler", "num_frames": 4, "stride": 2},
        "transform": {"_target_": "vidssl.datasets.transforms.ClipTransform", "size": 32},
        "views": 1,
        "audio": {"_target_": "vidssl.datasets.transforms.LogMel", "n_mels": 16},
        "audio_rate": 16000,
        "audio_seconds": 0.5,
    },
}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small synthetic videos, plus one without sound and one that is not a video, in labels.csv."""
    from vidssl.datasets.synthetic import make_synthetic

    root = make_synthetic(tmp_path_factory.mktemp("tiny"), num_videos=6, num_classes=3, height=48, width=48,
                          min_frames=24, max_frames=24, davis_train_per_class=0)
    rng = np.random.default_rng(0)
    save_mp4(root / "videos" / "silent.mp4", [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(24)])
    (root / "videos" / "broken.mp4").write_bytes(b"not a video at all")
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    with (root / "all.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows([[r["path"], r["label"], r["split"]] for r in rows])
        writer.writerow(["videos/silent.mp4", 0, "train"])
        writer.writerow(["videos/broken.mp4", 1, "train"])
    return root


def _entries(root: Path):
    from vidssl.datasets.formats import csv_manifest

    return csv_manifest(root, manifest="all.csv", split=None)


def test_labels_every_clip_once_and_reports_silent_and_broken(tiny_root: Path) -> None:
    task = random_task(TASK_CFG)
    dataset = labelling_dataset(tiny_root, _entries(tiny_root), TASK_CFG["data"], with_audio=True)
    labelling = label_clips(task, dataset, batch_size=4)
    assert len(labelling.paths) == 7 and len(set(labelling.paths)) == 7  # 6 videos + the silent one
    assert labelling.video_only == ["videos/silent.mp4"]
    assert list(labelling.skipped) == ["videos/broken.mp4"]
    assert labelling.clusters.shape == (2, 7)
    assert int(labelling.clusters[0].max()) < 3 and int(labelling.clusters[1].max()) < 4
    assert bool(((labelling.confidence > 0) & (labelling.confidence <= 1)).all())
    assert torch.allclose(labelling.embeddings.norm(dim=1), torch.ones(7), atol=1e-5)

    strict = label_clips(task, dataset, batch_size=4, allow_video_only=False)
    assert "videos/silent.mp4" in strict.skipped and len(strict.paths) == 6
    # Labels do not depend on the batch size or on which clips share a batch (eval mode, fixed view).
    single = label_clips(task, dataset, batch_size=1)
    assert torch.equal(single.clusters, labelling.clusters)


def test_equipartition_spreads_clusters(tiny_root: Path) -> None:
    task = random_task(TASK_CFG)
    dataset = labelling_dataset(tiny_root, _entries(tiny_root), TASK_CFG["data"], with_audio=True)
    balanced = label_clips(task, dataset, equipartition=True)
    sizes = [row["size"] for row in cluster_sizes(balanced)]
    assert len(sizes) == 3 and max(sizes) <= 4  # 7 clips over 3 clusters, none takes most


def test_checkpoint_round_trip(tiny_root: Path, tmp_path: Path) -> None:
    task = random_task(TASK_CFG)
    with torch.no_grad():
        for p in task.parameters():
            p.add_(0.01 * torch.randn_like(p))  # differ from the random init the rebuild would give
    path = tmp_path / "ckpt.pt"
    torch.save({"model": task.state_dict(), "config": {"task": TASK_CFG}}, path)
    rebuilt, task_cfg = task_from_checkpoint(path)
    assert task_cfg == TASK_CFG
    dataset = labelling_dataset(tiny_root, _entries(tiny_root)[:3], TASK_CFG["data"], with_audio=True)
    a, b = label_clips(task, dataset), label_clips(rebuilt, dataset)
    assert torch.equal(a.clusters, b.clusters) and torch.allclose(a.confidence, b.confidence)
    torch.save({"model": task.state_dict(), "config": {}}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt.*task"):
        task_from_checkpoint(tmp_path / "bare.pt")


def test_video_only_task_needs_no_audio(tiny_root: Path) -> None:
    cfg = {"model": {**TASK_CFG["model"], "audio_encoder": None, "align_modalities": False},
           "data": {**TASK_CFG["data"], "audio": None}}
    task = random_task(cfg)
    dataset = labelling_dataset(tiny_root, _entries(tiny_root), cfg["data"], with_audio=False)
    labelling = label_clips(task, dataset)
    assert len(labelling.paths) == 7 and labelling.video_only == []  # no audio expected, none reported


def test_representatives_are_nearest_the_centre() -> None:
    emb = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8], [0.2, 0.98], [0.99, 0.05]]), dim=1)
    labelling = Labelling(paths=[f"c{i}" for i in range(6)], clusters=torch.tensor([[0, 0, 1, 1, 1, 0]]),
                          confidence=torch.ones(6), embeddings=emb)
    reps = representatives(labelling, per_cluster=2)
    assert reps[0][0] == 5  # (0.99, 0.05) is closest to the mean direction of clips 0, 1, 5
    assert reps[1] == [4, 2]  # cluster 1's centre leans to (0, 1): clip 4, then clip 2
    assert [r["cluster"] for r in cluster_sizes(labelling)] == [0, 1]


def test_csv_round_trips_through_evaluate(tiny_root: Path, tmp_path: Path) -> None:
    labelling = Labelling(paths=["videos/v000.mp4", "videos/v001.mp4", "videos/v002.mp4"],
                          clusters=torch.tensor([[2, 0, 1], [0, 0, 1]]), confidence=torch.tensor([0.5, 0.25, 1.0]),
                          embeddings=torch.eye(3))
    out = write_labels_csv(tmp_path / "labels.csv", labelling)
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "cluster", "confidence", "cluster_h1"]
    assert rows[1] == ["videos/v000.mp4", "2", "0.5000", "0"]
    metrics, _ = evaluate_labels(out, tiny_root / "manifest.csv")  # classes 0, 1, 2 in the manifest
    assert metrics["accuracy"] == pytest.approx(1.0) and metrics["num_clips"] == 3


def test_tool_writes_csv_summary_and_grid(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "pseudo_label.py"), "checkpoint=random", "task=selavi",
         "dataset=csv", f"dataset.root={tiny_root}", "dataset.manifest=all.csv", f"out={out}",
         "encoder.base_width=4", "task.model.audio_encoder.base_width=4", "task.model.num_clusters=[3]",
         "task.data.transform.size=32", "task.data.sampler.num_frames=4"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no sound" in result.stdout and "videos/broken.mp4" in result.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 7 and set(rows[0]) == {"path", "cluster", "confidence"}
    assert (tmp_path / "labels_grid.png").stat().st_size > 0


def test_feature_clustering_methods_on_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    truth = torch.arange(40) % 4
    features = torch.nn.functional.normalize(centres[truth] + 0.05 * torch.randn(40, 16, generator=g), dim=1)
    paths = [f"c{i}" for i in range(40)]
    for method in ("kmeans", "sinkhorn"):
        labelling = cluster_features(paths, features, method=method, num_clusters=4)
        assert labelling.num_heads == 1 and labelling.paths == paths
        from vidssl.eval.clustering import cluster_metrics

        assert cluster_metrics(truth.numpy(), labelling.clusters[0].numpy())["accuracy"] == 1.0, method
        assert bool((labelling.confidence > 0.5).all()) and bool((labelling.confidence <= 1.0).all())
    with pytest.raises(ValueError, match="num_clusters"):
        cluster_features(paths, features, method="kmeans", num_clusters=41)
    with pytest.raises(ValueError, match="method"):
        cluster_features(paths, features, method="spectral", num_clusters=4)


def test_balanced_kmeans_balances_where_kmeans_does_not() -> None:
    """Three tight groups of 20, 10 and 10 clips into 4 clusters: optimal transport splits the large group
    to give every cluster 10 clips; k-means need not."""
    g = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    group = torch.tensor([0] * 20 + [1] * 10 + [2] * 10)
    features = torch.nn.functional.normalize(centres[group] + 0.2 * torch.randn(40, 8, generator=g), dim=1)
    labels, _ = balanced_kmeans(features, 4)
    sizes = torch.bincount(labels, minlength=4)
    assert sizes.min() >= 9 and sizes.max() <= 11, sizes.tolist()


def test_encoder_features_of_any_encoder(tiny_root: Path) -> None:
    from vidssl.run import load_encoder

    encoder = load_encoder("random", {"_target_": "vidssl.encoders.video.r2d3d_18", "base_width": 4})
    dataset = labelling_dataset(tiny_root, _entries(tiny_root), TASK_CFG["data"], with_audio=False)
    paths, features, skipped = encoder_features(encoder, dataset, batch_size=4)
    assert len(paths) == 7 and features.shape == (7, encoder.out_channels) and list(skipped) == ["videos/broken.mp4"]
    assert torch.allclose(features.norm(dim=1), torch.ones(7), atol=1e-5)


def test_tool_clusters_a_non_selavi_checkpoint(tiny_root: Path, tmp_path: Path) -> None:
    """A SimCLR-style checkpoint (encoder weights and config, no SeLaVi heads): kmeans and sinkhorn work,
    selavi says what to use instead."""
    from vidssl.run import load_encoder

    encoder_cfg = {"_target_": "vidssl.encoders.video.r2d3d_18", "base_width": 4}
    encoder = load_encoder("random", encoder_cfg)
    ckpt = tmp_path / "simclr.pt"
    task_cfg = {"model": {"_target_": "vidssl.tasks.contrastive.SimCLR"}, "data": TASK_CFG["data"]}
    torch.save({"encoder": encoder.state_dict(), "model": {}, "config": {"encoder": encoder_cfg, "task": task_cfg}},
               ckpt)
    for method in ("kmeans", "sinkhorn"):
        out = tmp_path / f"{method}.csv"
        result = subprocess.run(
            [sys.executable, str(REPO / "tools" / "pseudo_label.py"), f"method={method}", "num_clusters=3",
             f"checkpoint={ckpt}", "dataset=csv", f"dataset.root={tiny_root}", "dataset.manifest=all.csv",
             f"out={out}"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 7 and set(rows[0]) == {"path", "cluster", "confidence"}
        assert {r["cluster"] for r in rows} <= {"0", "1", "2"}
        metrics, _ = evaluate_labels(out, tiny_root / "all.csv")
        assert metrics["num_clips"] == 7
