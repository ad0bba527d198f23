"""Clustering metrics: how well pseudo-labels (clusters) agree with ground-truth classes.

The metrics the SeLaVi paper reports for VGG-Sound, Kinetics-Sound and AVE:

- ``NMI``: normalised mutual information (arithmetic mean normalisation, scikit-learn's default);
- ``ARI``: adjusted Rand index;
- ``accuracy``: the fraction of clips labelled right under the best one-to-one matching of clusters to
  classes (Hungarian algorithm); with more clusters than classes the unmatched clusters count as wrong;
- ``purity``: the fraction of clips whose cluster's majority class is their own class;
- ``mean_entropy``: the entropy (nats) of the class distribution inside a cluster, averaged over the
  non-empty clusters (0 when every cluster holds a single class).

``evaluate_labels`` reads a pseudo-label CSV (``tools/pseudo_label.py``) and a manifest with labels, and is
what ``python tools/evaluate.py metric=clusters labels=LABELS.csv manifest=MANIFEST.csv`` calls.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import entropy
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _as_labels(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one label per clip (1-D), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def contingency(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of (cluster, class) pairs.

    Outputs: (table K_pred×K_true int, cluster ids K_pred, class ids K_true); rows/columns in sorted id order.
    """
    clusters, cluster_index = np.unique(pred_labels, return_inverse=True)
    classes, class_index = np.unique(true_labels, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(table, (cluster_index, class_index), 1)
    return table, clusters, classes


def hungarian_accuracy(true_labels: Sequence[int] | np.ndarray, pred_labels: Sequence[int] | np.ndarray) -> float:
    """Accuracy under the one-to-one cluster→class matching that maximises the number of right clips."""
    true = _as_labels(true_labels, "true_labels")
    pred = _as_labels(pred_labels, "pred_labels")
    table, _, _ = contingency(true, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(true))


def cluster_metrics(true_labels: Sequence[int] | np.ndarray, pred_labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Agreement of a clustering with ground-truth classes.

    Inputs:  true_labels N ints (classes), pred_labels N ints (cluster ids); ids need not be contiguous.
    Outputs: {"NMI", "ARI", "accuracy", "purity", "mean_entropy"} as floats.
    """
    true = _as_labels(true_labels, "true_labels")
    pred = _as_labels(pred_labels, "pred_labels")
    if len(true) != len(pred):
        raise ValueError(f"true_labels has {len(true)} clips but pred_labels has {len(pred)}")
    if len(true) == 0:
        raise ValueError("no clips to evaluate")
    table, _, _ = contingency(true, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {
        "NMI": float(normalized_mutual_info_score(true, pred)),
        "ARI": float(adjusted_rand_score(true, pred)),
        "accuracy": float(table[rows, cols].sum() / len(true)),
        "purity": float(table.max(axis=1).sum() / len(true)),
        "mean_entropy": float(np.mean([entropy(row) for row in table])),  # scipy normalises each row
    }


def per_cluster_rows(true_labels: Sequence[int] | np.ndarray, pred_labels: Sequence[int] | np.ndarray) -> list[dict]:
    """One row per cluster: ``cluster, size, majority_label, purity, entropy`` (largest clusters first)."""
    true = _as_labels(true_labels, "true_labels")
    pred = _as_labels(pred_labels, "pred_labels")
    table, clusters, classes = contingency(true, pred)
    rows = [
        {
            "cluster": int(cluster),
            "size": int(counts.sum()),
            "majority_label": int(classes[counts.argmax()]),
            "purity": float(counts.max() / counts.sum()),
            "entropy": float(entropy(counts)),
        }
        for cluster, counts in zip(clusters, table)
    ]
    return sorted(rows, key=lambda r: (-r["size"], r["cluster"]))


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        return list(reader)


def _int_field(row: dict[str, str], column: str, path: Path, line: int) -> int | None:
    text = (row.get(column) or "").strip()
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}: column {column!r} is not an integer: {text!r}") from None


def _manifest_labels(path: Path) -> dict[str, int | None]:
    """Ground truth by path. Labels are read as ``dataset=csv`` reads them: all integers (kept; -1 or
    empty: unlabelled), or else class names (each name one class; empty: unlabelled)."""
    from vidssl.datasets.formats import _is_int  # the same integer test as dataset=csv

    rows = _read_csv(path, ["path", "label"])
    texts = {row["path"]: (row.get("label") or "").strip() for row in rows}
    if all(_is_int(t) for t in texts.values() if t):
        return {p: int(t) if t else None for p, t in texts.items()}
    names = {name: i for i, name in enumerate(sorted({t for t in texts.values() if t}))}
    return {p: names[t] if t else None for p, t in texts.items()}


def evaluate_labels(
    labels_csv: str | Path, manifest_csv: str | Path, *, column: str = "cluster"
) -> tuple[dict[str, float | int], list[dict]]:
    """Score a pseudo-label CSV against the ground-truth labels of a manifest.

    Inputs:  ``labels_csv`` with columns ``path`` and ``column`` (default ``cluster``: the main head);
             ``manifest_csv`` with columns ``path`` and ``label`` (integers or class names, as
             ``dataset=csv`` takes them; paths compared as written, so both must be relative to the same
             root, as ``tools/pseudo_label.py`` writes them).
    Outputs: (metrics = cluster_metrics plus ``num_clips`` / ``num_clusters`` / ``num_classes`` /
             ``unlabelled`` (clips whose manifest label is empty or -1, left out), per-cluster rows).
    Clips of the labels CSV missing from the manifest are an error naming the first few.
    """
    labels_path, manifest_path = Path(labels_csv), Path(manifest_csv)
    truth = _manifest_labels(manifest_path)

    true, pred, unknown, unlabelled = [], [], [], 0
    for line, row in enumerate(_read_csv(labels_path, ["path", column]), start=2):
        cluster = _int_field(row, column, labels_path, line)
        if cluster is None:
            raise ValueError(f"{labels_path}, line {line}: empty {column!r} for {row['path']}")
        if row["path"] not in truth:
            unknown.append(row["path"])
            continue
        label = truth[row["path"]]
        if label is None or label < 0:
            unlabelled += 1
            continue
        true.append(label)
        pred.append(cluster)
    if unknown:
        raise ValueError(
            f"{len(unknown)} clip(s) of {labels_path} are not in {manifest_path}, e.g. {unknown[:5]} "
            "(paths must be written as in the manifest)"
        )
    if not true:
        raise ValueError(f"no clip of {labels_path} has a ground-truth label in {manifest_path}")
    metrics: dict[str, float | int] = dict(cluster_metrics(true, pred))
    metrics.update(
        num_clips=len(true),
        num_clusters=len(set(pred)),
        num_classes=len(set(true)),
        unlabelled=unlabelled,
    )
    return metrics, per_cluster_rows(true, pred)
