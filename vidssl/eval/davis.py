"""DAVIS-2017 semi-supervised evaluation: region similarity J, contour accuracy F, and their statistics.

Follows the official davis2017-evaluation toolkit:

- objects are the labels 1..N of a sequence's first ground-truth annotation; ground-truth 255 (void)
  counts as background, as the toolkit reads it;
- the evaluated frames are the ground-truth annotated frames without the first (it is given as input)
  and the last one (``annotations[1:-1]``); every one needs a result PNG of the same name and size;
  a frame between the first and last annotation without ground truth is not scored, and a warning
  names it (DAVIS annotates every frame, so a gap is usually a lost file);
- J is the IoU of an object's result and ground-truth masks (1 when both are empty);
- F is the F-measure of boundary precision and recall: 1-pixel boundary maps (`boundary_map`, the
  toolkit's ``_seg2bmap``), a boundary pixel is matched when the other mask's boundary lies within
  ``bound_pix = ceil(bound_th · image diagonal)`` pixels (dilation by a disk of that radius;
  computed here with an exact Euclidean distance transform, which is the same set);
- per object: Mean, Recall (fraction of frames > 0.5) and Decay (mean of the first of 4 bins of
  frames minus the mean of the last, the toolkit's overlapping bins); the global J-/F- statistics are
  means over all objects of all sequences, and J&F-Mean = (J-Mean + F-Mean) / 2.

Departures: results whose object ids exceed the ground truth's raise an error naming the sequence
(the toolkit exits); results missing an object altogether score that object as empty (the toolkit
exits there too). The toolkit's "per-sequence" table lists objects (``<sequence>_<id>``); here that
table is the per-object one and the per-sequence table averages a sequence's objects.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from vidssl.datasets.formats import davis, read_mask

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
VOID = 255

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Per-frame measures on binary masks


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J: intersection over union of two H×W binary masks; 1 when both are empty."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a binary H×W mask, half a pixel towards the origin (the toolkit's _seg2bmap).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; in
    the last row only the right neighbour counts, in the last column only the lower one, and the
    bottom-right pixel is never a boundary.
    """
    seg = np.asarray(mask, dtype=bool)
    right, down, diag = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    edge = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    edge[-1, :] = seg[-1, :] ^ right[-1, :]
    edge[:, -1] = seg[:, -1] ^ down[:, -1]
    edge[-1, -1] = False
    return edge


def disk(radius: int) -> np.ndarray:
    """Binary (2r+1)×(2r+1) disk: offsets (y, x) with y² + x² ≤ r² (scikit-image's ``disk``)."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _within(boundary: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a boundary pixel: the dilation of `boundary` by ``disk(radius)``.

    Computed from the Euclidean distance to the nearest boundary pixel, which is exact for a disk
    structuring element and fast for any radius.
    """
    if not boundary.any():
        return np.zeros_like(boundary)
    return ndimage.distance_transform_edt(~boundary) <= radius


def bound_pixels(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """The boundary tolerance in pixels: ``bound_th`` itself when ≥ 1, else ceil(bound_th × diagonal)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def contour_accuracy(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    """F: boundary F-measure of two H×W binary masks, boundaries matched within `bound_pixels`."""
    gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    radius = bound_pixels(gt.shape, bound_th)
    gt_edge, pred_edge = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = np.count_nonzero(gt_edge), np.count_nonzero(pred_edge)
    # the toolkit's conventions when one or both boundaries are empty
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(pred_edge & _within(gt_edge, radius)) / n_pred
        recall = np.count_nonzero(gt_edge & _within(pred_edge, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(per_frame: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean, Recall (fraction > 0.5) and Decay of one object's per-frame J or F values.

    Decay: the frames are cut into 4 bins at ``round(linspace(1, n, 5)) - 1`` (each bin includes
    the next bin's first frame, as the toolkit's slicing does); Decay = mean(first bin) − mean(last bin).
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"statistics need a non-empty 1-D array of per-frame values, got shape {values.shape}")
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    ids = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(int)
    bins = [values[ids[i]: ids[i + 1] + 1] for i in range(4)]
    decay = float(np.mean(bins[0]) - np.mean(bins[3]))
    return mean, recall, decay


# --------------------------------------------------------------------------------------------------
# Sequences and result folders


def evaluate_sequence(gt: np.ndarray, result: np.ndarray, num_objects: int, *, bound_th: float = 0.008,
                      name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Per-object, per-frame J and F of one sequence.

    Inputs: gt, result T×H×W label maps (0 background, 1..num_objects; gt 255 = void = background).
    Outputs: J and F, each num_objects×T.
    """
    if gt.shape != result.shape:
        raise ValueError(f"sequence {name!r}: results {result.shape} and ground truth {gt.shape} differ in shape")
    if result.size and int(result.max()) > num_objects:
        raise ValueError(f"sequence {name!r}: results contain object id {int(result.max())} but the first "
                         f"ground-truth frame has only {num_objects} objects")
    gt = np.where(gt == VOID, 0, gt)
    j = np.zeros((num_objects, gt.shape[0]))
    f = np.zeros((num_objects, gt.shape[0]))
    for obj in range(1, num_objects + 1):
        for t in range(gt.shape[0]):
            j[obj - 1, t] = region_similarity(gt[t] == obj, result[t] == obj)
            f[obj - 1, t] = contour_accuracy(gt[t] == obj, result[t] == obj, bound_th)
    return j, f


def _read_sequence(name: str, gt_paths: Sequence[Path], results_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    gts, results = [], []
    for path in gt_paths:
        res_path = results_dir / name / f"{path.stem}.png"
        if not res_path.is_file():
            raise FileNotFoundError(f"sequence {name!r}: no result for frame {path.stem} (expected {res_path})")
        gt, res = read_mask(path), read_mask(res_path)
        if gt.shape != res.shape:
            raise ValueError(f"sequence {name!r}: result {res_path} is {res.shape[0]}×{res.shape[1]} but the "
                             f"ground truth {path} is {gt.shape[0]}×{gt.shape[1]}")
        gts.append(gt)
        results.append(res)
    return np.stack(gts), np.stack(results)


def unannotated_frames(frames: Sequence[Path], annotations: Sequence[Path]) -> list[str]:
    """The frames between a sequence's first and last annotation that have no ground truth of their own."""
    annotated = {a.stem for a in annotations}
    stems = [f.stem for f in frames]
    inside = [s for s in stems if annotations[0].stem <= s <= annotations[-1].stem]
    return [s for s in inside if s not in annotated]


def _write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row[c]:.3f}" if isinstance(row[c], float) else row[c] for c in columns])


def evaluate_results(
    davis_root: str | Path,
    results_dir: str | Path,
    split: str = "val",
    *,
    out_dir: str | Path | None = None,
    resolution: str = "480p",
    bound_th: float = 0.008,
    progress: bool = True,
) -> tuple[dict[str, float], list[dict], list[dict]]:
    """Evaluate a DAVIS result folder (``results_dir/<sequence>/<frame>.png``) against the ground truth.

    Returns:
      metrics: ``J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay`` (means over objects);
      per_object: one row per object, ``Sequence`` = ``<sequence>_<id>`` plus its J/F Mean, Recall, Decay;
      per_sequence: one row per sequence, ``Sequence``, ``objects`` and its objects' mean J, F, J&F.
    With ``out_dir``, also writes ``global_results-<split>.csv``, ``per-object_results-<split>.csv``
    and ``per-sequence_results-<split>.csv`` there (3 decimals, as the toolkit's CSVs).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder not found: {results_dir}")
    sequences = davis(davis_root, split=split, resolution=resolution)
    per_object: list[dict] = []
    per_sequence: list[dict] = []
    for seq in tqdm(sequences, desc=f"evaluate {split}", unit="seq", disable=not progress):
        if len(seq.annotations) < 3:
            raise ValueError(f"sequence {seq.name!r}: {len(seq.annotations)} ground-truth annotations; the "
                             f"evaluation skips the first and the last, so it needs at least 3")
        gaps = unannotated_frames(seq.frames, seq.annotations)
        if gaps:
            # DAVIS annotates every frame: a gap is usually a lost file, and those frames go unscored
            named = ", ".join(gaps[:10]) + (" ..." if len(gaps) > 10 else "")
            log.warning("sequence %r: %d frames between its first and last annotation have no ground truth and "
                        "are not evaluated: %s", seq.name, len(gaps), named)
        first = read_mask(seq.annotations[0])
        num_objects = int(np.where(first == VOID, 0, first).max())
        gt, result = _read_sequence(seq.name, seq.annotations[1:-1], results_dir)
        j, f = evaluate_sequence(gt, result, num_objects, bound_th=bound_th, name=seq.name)
        rows = []
        for obj in range(num_objects):
            jm, jr, jd = statistics(j[obj])
            fm, fr, fd = statistics(f[obj])
            rows.append({"Sequence": f"{seq.name}_{obj + 1}", "J-Mean": jm, "J-Recall": jr, "J-Decay": jd,
                         "F-Mean": fm, "F-Recall": fr, "F-Decay": fd})
        per_object += rows
        if rows:
            j_mean = float(np.mean([r["J-Mean"] for r in rows]))
            f_mean = float(np.mean([r["F-Mean"] for r in rows]))
            per_sequence.append({"Sequence": seq.name, "objects": num_objects, "J&F-Mean": (j_mean + f_mean) / 2,
                                 "J-Mean": j_mean, "F-Mean": f_mean})
    if not per_object:
        raise ValueError(f"{davis_root}: no objects to evaluate in split {split!r}")

    metrics = {name: float(np.mean([r[name] for r in per_object])) for name in GLOBAL_COLUMNS[1:]}
    metrics = {"J&F-Mean": (metrics["J-Mean"] + metrics["F-Mean"]) / 2, **metrics}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / f"global_results-{split}.csv", [metrics], GLOBAL_COLUMNS)
        _write_csv(out / f"per-object_results-{split}.csv", per_object, list(per_object[0]))
        _write_csv(out / f"per-sequence_results-{split}.csv", per_sequence, list(per_sequence[0]))
    return metrics, per_object, per_sequence


def _plain_table(rows: list[dict], columns: Sequence[str]) -> str:
    """Right-aligned columns separated by spaces, floats to 3 places (pandas' ``to_string(index=False)`` look)."""
    cells = [[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" ".join(c.rjust(wd) for c, wd in zip(columns, widths))]
    lines += [" ".join(v.rjust(wd) for v, wd in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def format_tables(metrics: dict[str, float], per_object: list[dict], split: str = "val") -> str:
    """The two tables the official toolkit prints: global results and per-object ("per sequence") J/F means."""
    return "\n".join([
        f"--------------------------- Global results for {split} ---------------------------",
        _plain_table([metrics], GLOBAL_COLUMNS),
        "",
        f"---------- Per sequence results for {split} ----------",
        _plain_table(per_object, ("Sequence", "J-Mean", "F-Mean")),
    ])
