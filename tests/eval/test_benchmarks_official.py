"""JHMDB keypoints, PCK and VIP mIoU against videowalk's own code (recorded by
tests/fixtures/videowalk_benchmarks/record.py: ``test()``'s JHMDB branch, ``eval_pck.py``, ``eval_vip.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vidssl.eval.jhmdb import pck, to_pixels, track_keypoints
from vidssl.eval.vip import CLASSES, evaluate_vip

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "videowalk_benchmarks"


@pytest.fixture(scope="module")
def jhmdb() -> dict:
    return torch.load(FIXTURES / "jhmdb.pt", weights_only=True)


def _track(recorded: dict, index: int, **options) -> np.ndarray:
    protocol = recorded["protocol"]
    feats = F.normalize(recorded["features"][index].float(), dim=1)  # test() L2-normalises its features
    joints = recorded["pos_img"][index].double().numpy() - 1
    size = protocol["input"]
    settings = dict(n_context=protocol["n_context"], topk=protocol["topk"], radius=protocol["radius"],
                    temperature=protocol["temperature"], sigma=protocol["sigma"])
    settings.update(options)
    return track_keypoints(feats, len(feats), joints[:, :, 0], tuple(recorded["sizes"][index]), (size, size),
                           **settings)


@pytest.mark.parametrize("index", [0, 1])
def test_keypoints_equal_the_official_jhmdb_branch(jhmdb, index):
    official = jhmdb["keypoints"][index].double().numpy()
    ours = _track(jhmdb, index)
    assert ours.shape == official.shape == (2, 15, 10)
    # the same top-3 cells (another cell would move a joint by ≥ 0.1); the weights agree to float32
    # rounding (measured: 1.9e-6 cells at most, 82 % of the values bit-identical)
    np.testing.assert_allclose(ours, official, rtol=0, atol=1e-5)
    assert not np.allclose(ours[:, :, 1:], ours[:, :, :1])  # the joints do move


def test_keypoint_options_change_the_positions(jhmdb):
    official = jhmdb["keypoints"][0].double().numpy()
    for options in ({"sigma": 0.0}, {"n_context": 20}):
        assert np.abs(_track(jhmdb, 0, **options) - official).max() > 0.05, options


def test_pck_equals_eval_pck(jhmdb):
    lost = jhmdb["lost"]
    preds, gts = [], []
    for index, cells in enumerate(jhmdb["keypoints"]):
        cells = cells.double().numpy().copy()
        if index == lost["video"]:
            cells[:, lost["joint"], lost["from_frame"]:] = -1
        preds.append(to_pixels(cells, (20, 20), tuple(jhmdb["sizes"][index])))
        gts.append(jhmdb["pos_img"][index].double().numpy() - 1)
    ours = pck(preds, gts)
    for alpha, official in jhmdb["pck"].items():
        official = official.double().numpy()
        np.testing.assert_allclose(ours[f"per_joint@{alpha:g}"], official[:15], rtol=0, atol=1e-9)
        assert ours[f"PCK@{alpha:g}"] == pytest.approx(official[15], abs=1e-9)
    # the lost joint's frames are left out (counting them as misses would change its PCK)
    counted = pck([p if i != lost["video"] else np.where(p < 0, 1e4, p) for i, p in enumerate(preds)], gts)
    assert counted["per_joint@0.5"][lost["joint"]] != ours["per_joint@0.5"][lost["joint"]]


def test_miou_equals_eval_vip(tmp_path):
    recorded = torch.load(FIXTURES / "vip.pt", weights_only=True)
    videos = sorted({name.split("/")[0] for name in recorded["names"]})
    root, results = tmp_path / "vip", tmp_path / "res"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "val_videos.txt").write_text("\n".join(videos) + "\n")
    for name, gt, pred in zip(recorded["names"], recorded["gt"], recorded["pred"]):
        video, file = name.split("/")
        for folder, array in ((root / "Annotations" / "Category_ids" / video, gt), (results / video, pred)):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.numpy()).save(folder / file)
        (root / "Images" / video).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", gt.shape[::-1]).save(root / "Images" / video / file.replace(".png", ".jpg"))
    metrics, table = evaluate_vip(root, results)
    assert metrics["frames"] == len(recorded["names"])
    assert metrics["mIoU"] == pytest.approx(recorded["mIoU"], abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(recorded["overall_accuracy"], abs=1e-12)
    hist = recorded["hist"].double().numpy()
    with np.errstate(invalid="ignore"):  # 0/0 for classes in neither: nan, left out of the mean
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    np.testing.assert_allclose(metrics["IoU"], iou, rtol=0, atol=1e-12, equal_nan=True)
    assert "mIoU" in table and CLASSES[-1] in table
