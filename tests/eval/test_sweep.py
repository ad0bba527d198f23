"""The propagation sweep: features once per video, every setting scored on train, the best applied to val."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from vidssl.datasets.formats import read_mask, write_mask
from vidssl.datasets.synthetic import render_clip
from vidssl.eval.features import PixelFeatures
from vidssl.eval.propagate import propagate_dataset
from vidssl.eval.sweep import grid_settings, setting_name, sweep_protocol, apply_best


def write_davis(root, videos: dict[str, list[str]], frames: int = 6) -> None:
    for k, name in enumerate(sorted({v for names in videos.values() for v in names})):
        clip = render_clip(k % 2, np.random.default_rng(k), height=32, width=48, num_frames=frames, num_objects=2)
        images, masks = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(clip.frames[t]).save(images / f"{t:05d}.jpg", quality=95)
            write_mask(masks / f"{t:05d}.png", clip.masks[t])
    (root / "ImageSets" / "2017").mkdir(parents=True)
    for split, names in videos.items():
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")


class Counting(PixelFeatures):
    calls = 0

    def __call__(self, frame):
        Counting.calls += 1
        return super().__call__(frame)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    write_davis(root, {"train": ["a", "b"], "val": ["c"]})
    return root


def test_grid_settings_and_names():
    settings = grid_settings({"topk": [5, 10], "temperature": [0.1]})
    assert settings == [{"topk": 5, "temperature": 0.1}, {"topk": 10, "temperature": 0.1}]
    assert setting_name(settings[0]) == "topk=5,temperature=0.1"
    with pytest.raises(ValueError, match="tile"):
        grid_settings({"tile": [4]})
    with pytest.raises(ValueError, match="non-empty list"):
        grid_settings({"topk": 5})


def test_sweep_extracts_once_per_video_and_applies_the_best(davis_root, tmp_path):
    Counting.calls = 0
    fn = Counting(stride=4)
    grid = {"n_context": [1, 3], "topk": [1, 5], "temperature": [0.05, 0.5]}
    base = {"radius": 3, "window": "square", "pad_first": False, "restrict_first": True}
    table, best = sweep_protocol(davis_root, tmp_path, fn, grid=grid, split="train", base=base, progress=False)
    assert Counting.calls == 2 * 6  # two train videos of six frames: once each, not once per setting (×8)
    assert len(table) == 8 and best == {k: table[0][k] for k in grid}
    assert [r["J&F-Mean"] for r in table] == sorted((r["J&F-Mean"] for r in table), reverse=True)
    assert len({r["J&F-Mean"] for r in table}) > 1  # the settings do differ
    with open(tmp_path / "sweep-train.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and float(rows[0]["J&F-Mean"]) == pytest.approx(table[0]["J&F-Mean"], abs=1e-4)

    # a swept setting's labels are those of a plain run with that setting
    setting = grid_settings(grid)[5]
    propagate_dataset(davis_root, tmp_path / "plain", fn, split="train", progress=False, **base, **setting)
    for name in ("a", "b"):
        for t in range(6):
            swept = read_mask(tmp_path / "sweep-train" / setting_name(setting) / name / f"{t:05d}.png")
            assert np.array_equal(swept, read_mask(tmp_path / "plain" / name / f"{t:05d}.png"))

    Counting.calls = 0
    metrics = apply_best(davis_root, tmp_path, fn, best, split="val", base=base, progress=False)
    assert Counting.calls == 6  # val once
    saved = json.loads((tmp_path / "best-val.json").read_text())
    assert saved["setting"] == best and saved["metrics"]["J&F-Mean"] == pytest.approx(metrics["J&F-Mean"])
    with pytest.raises(ValueError, match="both swept and fixed"):
        sweep_protocol(davis_root, tmp_path, fn, grid={"topk": [1]}, base={"topk": 5}, progress=False)
