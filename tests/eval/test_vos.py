"""YouTube-VOS/MOSE: late-appearing objects, the submission layout and local J&F (vidssl.eval.vos)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from vidssl.datasets.formats import read_mask
from vidssl.datasets.synthetic_benchmarks import make_ytvos
from vidssl.eval.features import PixelFeatures
from vidssl.eval.propagate import propagate_labels, read_frame
from vidssl.eval.vos import (
    check_submission,
    evaluate_vos,
    merge_groups,
    propagate_vos,
    seen_categories,
    vos_videos,
    write_zip,
)

ENTER = 5
PROTOCOL = dict(n_context=4, radius=6)


@pytest.fixture(scope="module")
def ytvos(tmp_path_factory):
    root = make_ytvos(tmp_path_factory.mktemp("ytvos"), num_videos=1, num_frames=9, enter=ENTER)
    feature_fn = PixelFeatures(stride=8)
    valid = propagate_vos(root, root / "res_valid", feature_fn, split="valid", progress=False, **PROTOCOL)
    heldout = propagate_vos(root, root / "res_heldout", feature_fn, split="heldout", progress=False,
                            zip_results=False, **PROTOCOL)
    return root, feature_fn, valid, heldout


def _reference_maps(root, feature_fn, split):
    """Each object propagated alone by propagate_labels from its first frame, painted in first-frame order."""
    video = vos_videos(root, split)[0]
    frames = [read_frame(f) for f in video.frames]
    gt_dir = video.annotations
    out = np.zeros((len(frames), *frames[0].shape[:2]), dtype=np.uint8)
    for obj in video.objects:
        k = [f.stem for f in video.frames].index(obj.frames[0])
        mask = (read_mask(gt_dir / f"{obj.frames[0]}.png") == obj.id).astype(np.uint8)
        feats = [feature_fn(f) for f in frames[k:]]
        for t, label_map in enumerate(propagate_labels(feats, mask, **PROTOCOL)):
            out[k + t][label_map.numpy() == 1] = obj.id
    return video, out


def test_late_object_starts_from_its_own_first_frame(ytvos):
    root, feature_fn, results, _ = ytvos
    video = vos_videos(root, "valid")[0]
    late = [o for o in video.objects if o.id == 2][0]
    stems = [f.stem for f in video.frames]
    assert stems.index(late.frames[0]) == ENTER  # the synthetic object enters mid-video
    written = {s: read_mask(results / "Annotations" / video.name / f"{s}.png") for s in video.listed_frames}
    assert all(not (written[s] == 2).any() for s in stems[:ENTER])  # none of it before its first frame
    given = read_mask(video.annotations / f"{late.frames[0]}.png") == 2
    assert given.any() and (written[late.frames[0]][given] == 2).all()  # its given mask is kept as given
    assert any((written[s] == 2).any() for s in stems[ENTER + 1:])  # and carried on afterwards
    _, reference = _reference_maps(root, feature_fn, "valid")
    for t, stem in enumerate(stems):
        np.testing.assert_array_equal(written[stem], reference[t], err_msg=stem)


def test_merge_paints_later_groups_over_earlier_ones():
    early = np.array([[1, 1, 0], [0, 2, 2]], dtype=np.uint8)
    late = np.array([[0, 1, 1], [0, 0, 0]], dtype=np.uint8)
    merged = merge_groups([early, late, None], [[3, 5], [7], [9]], (2, 3))
    np.testing.assert_array_equal(merged, [[3, 7, 7], [0, 5, 5]])


def test_local_jf_equals_a_direct_computation(ytvos):
    from vidssl.eval.davis import contour_accuracy

    root, feature_fn, _, results = ytvos
    seen = seen_categories(root / "train" / "meta.json")
    metrics, rows = evaluate_vos(root, results, "heldout", seen=seen, progress=False)
    video, maps = _reference_maps(root, feature_fn, "heldout")
    stems = [f.stem for f in video.frames]
    per_object = {}
    for obj in video.objects:
        j, f = [], []
        for stem in obj.frames[1:]:
            gt = read_mask(video.annotations / f"{stem}.png") == obj.id
            pred = maps[stems.index(stem)] == obj.id
            union = (gt | pred).sum()
            j.append(1.0 if union == 0 else (gt & pred).sum() / union)
            f.append(contour_accuracy(gt, pred))
        per_object[obj.category] = (np.mean(j), np.mean(f))
    assert {r["category"] for r in rows} == {"animal", "plant"} and "plant" not in seen
    assert metrics["J_seen"] == pytest.approx(per_object["animal"][0])
    assert metrics["F_seen"] == pytest.approx(per_object["animal"][1])
    assert metrics["J_unseen"] == pytest.approx(per_object["plant"][0])
    assert metrics["F_unseen"] == pytest.approx(per_object["plant"][1])
    assert metrics["Overall"] == pytest.approx(np.mean([*per_object["animal"], *per_object["plant"]]))
    assert metrics["J&F"] == pytest.approx(np.mean([v[0] for v in per_object.values()]) / 2
                                           + np.mean([v[1] for v in per_object.values()]) / 2)
    assert 0.2 < metrics["J"] < 1.0  # the pixel baseline tracks the sprites, imperfectly


def test_submission_layout(ytvos, tmp_path):
    root, _, results, _ = ytvos
    meta = json.loads((root / "valid" / "meta.json").read_text())
    video = next(iter(meta["videos"]))
    listed = sorted({f for obj in meta["videos"][video]["objects"].values() for f in obj["frames"]})
    size = Image.open(next((root / "valid" / "Annotations" / video).glob("*.png"))).size
    for stem in listed:
        with Image.open(results / "Annotations" / video / f"{stem}.png") as image:
            assert image.mode == "P" and image.size == size
    with zipfile.ZipFile(results / "submission.zip") as archive:
        assert sorted(archive.namelist()) == [f"Annotations/{video}/{s}.png" for s in listed]
    assert check_submission(root, results, "valid") == []
    assert check_submission(root, results / "submission.zip", "valid") == []

    # a missing frame, an RGB PNG and a wrong size are each reported
    broken = tmp_path / "broken"
    for stem in listed[1:]:
        image = Image.open(results / "Annotations" / video / f"{stem}.png")
        if stem == listed[1]:
            image = image.convert("RGB")
        if stem == listed[2]:
            image = image.resize((size[0] // 2, size[1]))
        (broken / "Annotations" / video).mkdir(parents=True, exist_ok=True)
        image.save(broken / "Annotations" / video / f"{stem}.png")
    problems = check_submission(root, broken, "valid")
    assert any(listed[0] in p and "missing" in p for p in problems)
    assert any(listed[1] in p and "palette" in p for p in problems)
    assert any(listed[2] in p and "annotations are" in p for p in problems)
    assert len(problems) == 3
    zipped = write_zip(broken)
    assert len(check_submission(root, zipped, "valid")) == 3


def test_bad_metadata_is_named(tmp_path):
    root = make_ytvos(tmp_path / "y", num_videos=1, num_frames=7, enter=3)
    meta = json.loads((root / "valid" / "meta.json").read_text())
    video = next(iter(meta["videos"]))
    meta["videos"][video]["objects"]["2"]["frames"].append("99999")
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="99999"):
        vos_videos(root, "valid")
    with pytest.raises(FileNotFoundError, match="split folder"):
        vos_videos(root, "test")


def test_benchmark_rows_for_a_long_video():
    from vidssl.benchmarks.propagate import run

    result = run(channels=[8], height=48, width=64, frames=1, n_context=3, radius=3, methods=["windowed"],
                 vos_frames=6, vos_height=32, vos_width=48)
    vos = [r for r in result["rows"] if r["method"].startswith("propagate_vos")]
    assert [r["frames"] for r in vos] == [6, 12] and all(r["s_per_frame"] > 0 for r in vos)


def test_without_meta_json_the_annotations_name_the_objects(ytvos, tmp_path):
    import shutil

    root = ytvos[0]
    copy = tmp_path / "copy"
    shutil.copytree(root / "valid", copy / "valid", ignore=shutil.ignore_patterns("meta.json"))
    with_meta, without = vos_videos(root, "valid")[0], vos_videos(copy, "valid")[0]
    assert [o.id for o in without.objects] == [o.id for o in with_meta.objects]
    assert [o.frames[0] for o in without.objects] == [o.frames[0] for o in with_meta.objects]
    assert without.objects[1].frames == tuple(f.stem for f in without.frames if f.stem >= without.objects[1].frames[0])
