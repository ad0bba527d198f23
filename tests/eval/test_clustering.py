"""Clustering metrics on hand-made labelings with known scores, and against slow obvious references."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from vidssl.eval.clustering import cluster_metrics, evaluate_labels, hungarian_accuracy, per_cluster_rows


def brute_force_accuracy(true: list[int], pred: list[int]) -> float:
    """Try every one-to-one map of clusters to classes (unmatched clusters count as wrong)."""
    clusters, classes = sorted(set(pred)), sorted(set(true))
    best = 0
    # Pad the classes with "no class" so every injective matching is among the permutations.
    targets = classes + [None] * max(0, len(clusters) - len(classes))
    for perm in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[p] == t for p, t in zip(pred, true)))
    return best / len(true)


def slow_purity_and_entropy(true: list[int], pred: list[int]) -> tuple[float, float]:
    purity_hits, entropies = 0, []
    for c in sorted(set(pred)):
        members = [t for t, p in zip(true, pred) if p == c]
        counts = [members.count(k) for k in sorted(set(members))]
        purity_hits += max(counts)
        n = len(members)
        entropies.append(-sum(k / n * math.log(k / n) for k in counts))
    return purity_hits / len(true), sum(entropies) / len(entropies)


def test_identical_up_to_permutation_scores_one() -> None:
    true = [0, 0, 1, 1, 2, 2, 2]
    pred = [5, 5, 9, 9, 1, 1, 1]  # a renaming of the classes
    m = cluster_metrics(true, pred)
    for key in ("NMI", "ARI", "accuracy", "purity"):
        assert m[key] == pytest.approx(1.0), key
    assert m["mean_entropy"] == pytest.approx(0.0)


def test_hand_computed_values() -> None:
    # Cluster 0 holds classes {0, 0, 1}, cluster 1 holds {1, 1, 1, 0}: 7 clips.
    true = [0, 0, 1, 1, 1, 1, 0]
    pred = [0, 0, 0, 1, 1, 1, 1]
    m = cluster_metrics(true, pred)
    assert m["purity"] == pytest.approx((2 + 3) / 7)
    assert m["accuracy"] == pytest.approx(5 / 7)  # 0→0, 1→1
    h0 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    h1 = -(3 / 4 * math.log(3 / 4) + 1 / 4 * math.log(1 / 4))
    assert m["mean_entropy"] == pytest.approx((h0 + h1) / 2)


def test_single_cluster_and_all_singletons() -> None:
    true = [0, 0, 1, 1]
    one = cluster_metrics(true, [3, 3, 3, 3])
    assert one["NMI"] == pytest.approx(0.0)
    assert one["ARI"] == pytest.approx(0.0)
    assert one["purity"] == pytest.approx(0.5)
    assert one["accuracy"] == pytest.approx(0.5)
    assert one["mean_entropy"] == pytest.approx(math.log(2))
    singletons = cluster_metrics(true, [0, 1, 2, 3])
    assert singletons["purity"] == pytest.approx(1.0)  # why purity alone misleads
    assert singletons["accuracy"] == pytest.approx(0.5)  # only two clusters can be matched


@pytest.mark.parametrize("k_true,k_pred", [(3, 3), (3, 4), (4, 3)])
def test_against_slow_reference(k_true: int, k_pred: int) -> None:
    rng = np.random.default_rng(k_true * 10 + k_pred)
    for _ in range(5):
        true = rng.integers(0, k_true, size=30).tolist()
        pred = rng.integers(0, k_pred, size=30).tolist()
        m = cluster_metrics(true, pred)
        assert m["accuracy"] == pytest.approx(brute_force_accuracy(true, pred))
        assert hungarian_accuracy(true, pred) == pytest.approx(m["accuracy"])
        purity, mean_entropy = slow_purity_and_entropy(true, pred)
        assert m["purity"] == pytest.approx(purity)
        assert m["mean_entropy"] == pytest.approx(mean_entropy)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="pred_labels has 2"):
        cluster_metrics([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        cluster_metrics([0.5, 1.0], [0, 1])


def test_per_cluster_rows() -> None:
    rows = per_cluster_rows([0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1])
    assert [r["cluster"] for r in rows] == [1, 0]  # largest first
    assert rows[0] == pytest.approx({"cluster": 1, "size": 4, "majority_label": 1, "purity": 0.75,
                                     "entropy": -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))})


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_evaluate_labels_joins_on_path(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path / "manifest.csv",
        ["path", "label", "split"],
        [["videos/a.mp4", 0, "train"], ["videos/b.mp4", 0, "train"], ["videos/c.mp4", 1, "val"],
         ["videos/d.mp4", 1, "val"], ["videos/e.mp4", "", "val"]],
    )
    # Rows in another order than the manifest; e has no ground truth and is left out.
    labels = _write(
        tmp_path / "labels.csv",
        ["path", "cluster", "confidence", "cluster_h1"],
        [["videos/d.mp4", 7, 0.9, 0], ["videos/a.mp4", 2, 0.8, 0], ["videos/c.mp4", 7, 0.7, 1],
         ["videos/b.mp4", 2, 0.6, 1], ["videos/e.mp4", 2, 0.5, 1]],
    )
    metrics, rows = evaluate_labels(labels, manifest)
    assert metrics["NMI"] == pytest.approx(1.0) and metrics["accuracy"] == pytest.approx(1.0)
    assert (metrics["num_clips"], metrics["num_clusters"], metrics["num_classes"], metrics["unlabelled"]) == (4, 2, 2, 1)
    assert {r["cluster"] for r in rows} == {2, 7}
    other, _ = evaluate_labels(labels, manifest, column="cluster_h1")
    assert other["accuracy"] == pytest.approx(0.5)


def test_evaluate_labels_errors_name_the_file(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "manifest.csv", ["path", "label"], [["a.mp4", 0]])
    stray = _write(tmp_path / "labels.csv", ["path", "cluster"], [["a.mp4", 0], ["zz.mp4", 1]])
    with pytest.raises(ValueError, match="zz.mp4"):
        evaluate_labels(stray, manifest)
    no_column = _write(tmp_path / "bad.csv", ["path", "label"], [["a.mp4", 0]])
    with pytest.raises(ValueError, match="bad.csv.*cluster"):
        evaluate_labels(no_column, manifest)
    not_int = _write(tmp_path / "worse.csv", ["path", "cluster"], [["a.mp4", "x"]])
    with pytest.raises(ValueError, match="worse.csv, line 2"):
        evaluate_labels(not_int, manifest)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        evaluate_labels(tmp_path / "missing.csv", manifest)


def test_evaluate_labels_reads_class_names_as_dataset_csv_does(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path / "manifest.csv",
        ["path", "label"],
        [["a.mp4", "bikes"], ["b.mp4", "bikes"], ["c.mp4", "dogs"], ["d.mp4", "3"], ["e.mp4", ""]],
    )
    labels = _write(tmp_path / "labels.csv", ["path", "cluster"],
                    [["a.mp4", 5], ["b.mp4", 5], ["c.mp4", 1], ["d.mp4", 0], ["e.mp4", 0]])
    metrics, rows = evaluate_labels(labels, manifest)
    # "3" is a class name among names, like any other; the empty label is unlabelled
    assert (metrics["num_classes"], metrics["num_clips"], metrics["unlabelled"]) == (3, 4, 1)
    assert metrics["accuracy"] == pytest.approx(1.0)
    mixed_up = _write(tmp_path / "mixed.csv", ["path", "cluster"],
                      [["a.mp4", 5], ["b.mp4", 1], ["c.mp4", 1], ["d.mp4", 0]])
    assert evaluate_labels(mixed_up, manifest)[0]["accuracy"] == pytest.approx(0.75)
