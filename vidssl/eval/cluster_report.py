"""Clusters a person can read: class names, a cluster × class confusion matrix (CSV and PNG), missing clips.

`tools/evaluate.py metric=clusters` adds these to the metrics of `vidssl.eval.clustering.evaluate_labels`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vidssl.eval.clustering import _manifest_labels, _read_csv, contingency


def class_names(manifest_csv: str | Path) -> dict[int, str]:
    """Class index → name as ``dataset=csv`` numbers them: the names themselves when the labels are names
    (sorted), else the integer labels written out."""
    rows = _read_csv(Path(manifest_csv), ["path", "label"])
    texts = {(row.get("label") or "").strip() for row in rows} - {""}
    truth = _manifest_labels(Path(manifest_csv))
    if all(t.lstrip("-").isdigit() for t in texts):
        return {int(t): t for t in texts if int(t) >= 0}
    by_path = {row["path"]: (row.get("label") or "").strip() for row in rows}
    return {index: by_path[path] for path, index in truth.items() if index is not None}


def cluster_confusion(labels_csv: str | Path, manifest_csv: str | Path, *, column: str = "cluster",
                      ) -> tuple[np.ndarray, list[int], list[str], list[str]]:
    """(counts clusters×classes, cluster ids, class names, manifest clips absent from the labels CSV)."""
    truth = _manifest_labels(Path(manifest_csv))
    names = class_names(manifest_csv)
    true, pred, seen = [], [], set()
    for row in _read_csv(Path(labels_csv), ["path", column]):
        seen.add(row["path"])
        label, cluster = truth.get(row["path"]), (row.get(column) or "").strip()
        if label is not None and label >= 0 and cluster:
            true.append(label)
            pred.append(int(cluster))
    table, clusters, classes = contingency(np.asarray(true, np.int64), np.asarray(pred, np.int64))
    missing = [path for path, label in truth.items() if path not in seen and label is not None and label >= 0]
    return table, [int(c) for c in clusters], [names.get(int(c), str(c)) for c in classes], missing


def majority_order(table: np.ndarray) -> list[int]:
    """The rows of a clusters×classes count table ordered by their majority class (column order), the fuller
    first within a class: a clustering that follows the classes then shows as a diagonal."""
    majority = table.argmax(axis=1)
    return sorted(range(table.shape[0]), key=lambda row: (majority[row], -table[row, majority[row]], row))


def write_confusion(out_dir: str | Path, table: np.ndarray, clusters: list[int], classes: list[str],
                    ) -> tuple[Path, Path]:
    """``confusion.csv`` (a row per cluster in cluster order, a column per class) and ``confusion.png`` (counts,
    colour bar; the clusters ordered by `majority_order`, each row labelled with its cluster id)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "confusion.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cluster", *classes])
        writer.writerows([[cluster, *map(int, counts)] for cluster, counts in zip(clusters, table)])
    order = majority_order(table) if table.size else []
    table, clusters = table[order], [clusters[i] for i in order]
    height = max(3.0, 0.35 * len(clusters) + 1.5)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 2.5), height))
    image = ax.imshow(table, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(clusters)), [str(c) for c in clusters])
    ax.set_xlabel("class (manifest)")
    ax.set_ylabel("cluster (ordered by majority class)")
    if table.size <= 400:
        for (i, j), n in np.ndenumerate(table):
            ax.text(j, i, str(int(n)), ha="center", va="center", color="white" if n < table.max() / 2 else "black",
                    fontsize=8)
    fig.colorbar(image, ax=ax, label="clips")
    ax.set_title("clips per cluster and class")
    fig.tight_layout()
    png_path = out / "confusion.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path
