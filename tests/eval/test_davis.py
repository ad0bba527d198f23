"""DAVIS J/F metrics on hand-made masks with known answers, and the result-folder evaluation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vidssl.datasets.formats import write_mask
from vidssl.eval.davis import (
    GLOBAL_COLUMNS,
    _within,
    boundary_map,
    bound_pixels,
    contour_accuracy,
    disk,
    evaluate_results,
    format_tables,
    region_similarity,
    statistics,
)


def square(shape=(40, 60), top=10, left=20, size=10) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top: top + size, left: left + size] = True
    return m


def slow_boundary_map(seg: np.ndarray) -> np.ndarray:
    """The toolkit's rule, pixel by pixel: differs from its right, lower or lower-right neighbour
    (a missing neighbour counts as background); last row: right only; last column: lower only;
    bottom-right corner: never."""
    h, w = seg.shape

    def at(y, x):
        return bool(seg[y, x]) if y < h and x < w else False

    out = np.zeros_like(seg, dtype=bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif y == h - 1:
                out[y, x] = at(y, x) != at(y, x + 1)
            elif x == w - 1:
                out[y, x] = at(y, x) != at(y + 1, x)
            else:
                out[y, x] = at(y, x) != at(y, x + 1) or at(y, x) != at(y + 1, x) or at(y, x) != at(y + 1, x + 1)
    return out


def test_boundary_map_matches_the_pixel_rule():
    rng = np.random.default_rng(0)
    for _ in range(5):
        seg = ndimage.binary_opening(rng.random((17, 23)) > 0.5)
        np.testing.assert_array_equal(boundary_map(seg), slow_boundary_map(seg))
    corner = np.zeros((6, 7), bool)
    corner[3:, 4:] = True  # touches the last row and column
    np.testing.assert_array_equal(boundary_map(corner), slow_boundary_map(corner))
    assert not boundary_map(np.ones((5, 5), bool)).any()  # a full frame has no boundary inside the image
    # a square's boundary: its outline shifted half a pixel towards the origin
    b = boundary_map(square((8, 8), 2, 2, 3))
    assert b[1, 1] and b[1, 4] and b[4, 1] and b[4, 4] and not b[3, 3] and not b[6, 6]


def test_distance_dilation_equals_disk_dilation():
    rng = np.random.default_rng(1)
    for radius in (0, 1, 2, 5, 8):
        edges = rng.random((30, 41)) > 0.97
        expected = ndimage.binary_dilation(edges, structure=disk(radius)) if radius else edges
        np.testing.assert_array_equal(_within(edges, radius), expected)
    assert not _within(np.zeros((5, 5), bool), 3).any()


def test_disk_and_tolerance():
    np.testing.assert_array_equal(disk(1), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
    assert disk(8).shape == (17, 17) and disk(8).sum() == 197
    assert bound_pixels((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert bound_pixels((40, 60)) == 1  # ceil(0.008 * 72.1)
    assert bound_pixels((40, 60), bound_th=3) == 3  # ≥ 1 means pixels


def test_identical_masks_score_one():
    m = square()
    assert region_similarity(m, m) == 1.0
    assert contour_accuracy(m, m) == 1.0


def test_disjoint_masks_score_zero():
    a, b = square(left=2), square(left=45)  # 33 px apart, tolerance 1 px
    assert region_similarity(a, b) == 0.0
    assert contour_accuracy(a, b) == 0.0


def test_one_pixel_shift_within_tolerance():
    a, b = square(), square(left=21)
    assert region_similarity(a, b) == pytest.approx(90 / 110)  # 10×9 overlap, 10×11 union
    assert bound_pixels(a.shape) == 1
    assert contour_accuracy(a, b) == 1.0  # every boundary pixel has a partner within 1 px
    # with zero tolerance only exactly coinciding boundary pixels match (the horizontal edges' overlap)
    ea, eb = boundary_map(a), boundary_map(b)
    p = (eb & ea).sum() / eb.sum()
    r = (ea & eb).sum() / ea.sum()
    assert contour_accuracy(a, b, bound_th=0) == pytest.approx(2 * p * r / (p + r))
    assert contour_accuracy(a, b, bound_th=0) < 1.0


def test_shift_beyond_tolerance_against_dilation_reference():
    a, b = square(size=12), square(top=13, left=24, size=12)
    radius = 2
    ea, eb = boundary_map(a), boundary_map(b)
    precision = (eb & ndimage.binary_dilation(ea, disk(radius))).sum() / eb.sum()
    recall = (ea & ndimage.binary_dilation(eb, disk(radius))).sum() / ea.sum()
    expected = 2 * precision * recall / (precision + recall)
    assert 0 < expected < 1
    assert contour_accuracy(a, b, bound_th=radius) == pytest.approx(expected)


def test_empty_masks():
    empty, m = np.zeros((40, 60), bool), square()
    assert region_similarity(empty, empty) == 1.0 and contour_accuracy(empty, empty) == 1.0
    assert region_similarity(m, empty) == 0.0 and contour_accuracy(m, empty) == 0.0  # missed object
    assert region_similarity(empty, m) == 0.0 and contour_accuracy(empty, m) == 0.0  # hallucinated object


def test_statistics_on_a_designed_sequence():
    values = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    mean, recall, decay = statistics(values)
    assert mean == pytest.approx(0.5)
    assert recall == pytest.approx(0.5)  # 1.0, 0.8, 0.6 are > 0.5
    # bins start at round(linspace(1, 6, 5)) - 1 = [0, 1, 3, 4, 5]: first bin [1.0, 0.8], last [0.2, 0.0]
    assert decay == pytest.approx(0.9 - 0.1)
    assert statistics([0.7] * 9) == pytest.approx((0.7, 1.0, 0.0))
    assert statistics([0.5]) == pytest.approx((0.5, 0.0, 0.0))  # 0.5 is not > 0.5
    with pytest.raises(ValueError):
        statistics([])


# --------------------------------------------------------------------------------------------------
# A tiny DAVIS layout the tests write themselves


def moving_masks(num_frames: int, shape=(32, 48)) -> list[np.ndarray]:
    """Object 1: a square moving right; object 2: a fixed bar."""
    masks = []
    for t in range(num_frames):
        m = np.zeros(shape, np.uint8)
        m[4:14, 2 + 2 * t: 12 + 2 * t] = 1
        m[20:28, 30:44] = 2
        masks.append(m)
    return masks


def write_davis(root: Path, sequences: dict[str, list[np.ndarray]], split: str = "val") -> Path:
    for name, masks in sequences.items():
        for t, m in enumerate(masks):
            frame = np.stack([m * 80, m * 40, 255 - m * 60], axis=-1).astype(np.uint8)
            (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg")
            write_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", m)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(sequences) + "\n")
    return root


def write_results(out: Path, sequences: dict[str, list[np.ndarray]]) -> Path:
    for name, masks in sequences.items():
        for t, m in enumerate(masks):
            write_mask(out / name / f"{t:05d}.png", m)
    return out


def test_evaluate_results_perfect_and_missing_object(tmp_path):
    gt = {"alpha": moving_masks(8), "beta": moving_masks(6)}
    root = write_davis(tmp_path / "davis", gt)
    perfect = write_results(tmp_path / "perfect", gt)
    metrics, per_object, per_sequence = evaluate_results(root, perfect, out_dir=tmp_path / "eval", progress=False)
    assert list(metrics) == list(GLOBAL_COLUMNS)
    assert metrics == pytest.approx({"J&F-Mean": 1, "J-Mean": 1, "J-Recall": 1, "J-Decay": 0, "F-Mean": 1,
                                     "F-Recall": 1, "F-Decay": 0})
    assert [r["Sequence"] for r in per_object] == ["alpha_1", "alpha_2", "beta_1", "beta_2"]
    assert [r["Sequence"] for r in per_sequence] == ["alpha", "beta"]
    with open(tmp_path / "eval" / "global_results-val.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{c: "1.000" if "Decay" not in c else "0.000" for c in GLOBAL_COLUMNS}]
    assert (tmp_path / "eval" / "per-object_results-val.csv").read_text().count("\n") == 5
    assert (tmp_path / "eval" / "per-sequence_results-val.csv").read_text().count("\n") == 3

    # object 2 of beta never predicted: its J and F are 0 on every evaluated frame
    lost = {"alpha": gt["alpha"], "beta": [np.where(m == 2, 0, m).astype(np.uint8) for m in gt["beta"]]}
    metrics, per_object, per_sequence = evaluate_results(root, write_results(tmp_path / "lost", lost), progress=False)
    beta_2 = next(r for r in per_object if r["Sequence"] == "beta_2")
    assert beta_2["J-Mean"] == 0 and beta_2["F-Mean"] == 0 and beta_2["J-Recall"] == 0
    assert metrics["J-Mean"] == pytest.approx(3 / 4) and metrics["F-Mean"] == pytest.approx(3 / 4)
    assert per_sequence[1]["J&F-Mean"] == pytest.approx(0.5)
    table = format_tables(metrics, per_object)
    assert "Global results for val" in table and "J&F-Mean" in table and "beta_2" in table


def test_first_and_last_frames_are_not_evaluated(tmp_path):
    gt = {"alpha": moving_masks(6)}
    root = write_davis(tmp_path / "davis", gt)
    res = [m.copy() for m in gt["alpha"]]
    res[0][:] = 0
    res[-1][:] = 0  # wrong only on the first and last frames
    metrics, _, _ = evaluate_results(root, write_results(tmp_path / "res", {"alpha": res}), progress=False)
    assert metrics["J&F-Mean"] == pytest.approx(1.0)


def test_decay_of_a_drifting_result(tmp_path):
    # the predicted square stays where it was while the true one moves: J falls over time
    gt = {"alpha": moving_masks(10)}
    root = write_davis(tmp_path / "davis", gt)
    res = [np.where(gt["alpha"][1] == 1, 1, np.where(m == 2, 2, 0)).astype(np.uint8) for m in gt["alpha"]]
    _, per_object, _ = evaluate_results(root, write_results(tmp_path / "res", {"alpha": res}), progress=False)
    square_row = per_object[0]
    # evaluated frames 1..8: overlap of two 10-px squares shifted by 2(t-1) px → J = (10-s)/(10+s)
    js = [(10 - 2 * k) / (10 + 2 * k) for k in range(8)]
    mean, recall, decay = statistics(np.clip(js, 0, None))
    assert square_row["J-Mean"] == pytest.approx(mean)
    assert square_row["J-Decay"] == pytest.approx(decay) and decay > 0.5
    assert per_object[1]["J-Mean"] == 1.0  # the bar is always right


def test_bad_results_name_the_sequence(tmp_path):
    gt = {"alpha": moving_masks(5)}
    root = write_davis(tmp_path / "davis", gt)
    missing = write_results(tmp_path / "missing", gt)
    (missing / "alpha" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match="alpha.*00002"):
        evaluate_results(root, missing, progress=False)

    extra = [m.copy() for m in gt["alpha"]]
    extra[2][0, 0] = 3  # an object the ground truth does not have
    with pytest.raises(ValueError, match="alpha.*object id 3"):
        evaluate_results(root, write_results(tmp_path / "extra", {"alpha": extra}), progress=False)

    small = [m[:16] for m in gt["alpha"]]
    with pytest.raises(ValueError, match="alpha.*16×48"):
        evaluate_results(root, write_results(tmp_path / "small", {"alpha": small}), progress=False)

    with pytest.raises(FileNotFoundError, match="results folder"):
        evaluate_results(root, tmp_path / "nowhere", progress=False)


def test_missing_ground_truth_mid_sequence_is_named(tmp_path, caplog):
    gt = {"alpha": moving_masks(8)}
    root = write_davis(tmp_path / "davis", gt)
    results = write_results(tmp_path / "res", gt)
    lost = sorted((root / "Annotations" / "480p" / "alpha").glob("*.png"))[3]
    lost.unlink()
    with caplog.at_level("WARNING", logger="vidssl.eval.davis"):
        metrics, _, _ = evaluate_results(root, results, progress=False)
    warned = [r.getMessage() for r in caplog.records if "no ground truth" in r.getMessage()]
    assert len(warned) == 1 and "'alpha'" in warned[0] and lost.stem in warned[0]
    assert metrics["J&F-Mean"] == pytest.approx(1.0)
