"""protocol=dinov3 against the DINOv3 segmentation-tracking notebook (tests/fixtures/dinov3/, see OFFICIAL.md).

The notebook's cells ran on the 22-frame clip of tests/fixtures/dino/ with the tiny random-init
official DINOv3 ViT of tests/fixtures/backbones/ (patch 8) at short side 192; vidssl loads the same
file through timm's vit_small_patch16_dinov3_qkvb and propagates with the preset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vidssl.datasets.formats import davis, read_mask
from vidssl.eval.backbone_features import build_backbone_features, multiple_frame_size
from vidssl.eval.propagate import propagate_dataset, read_frame
from vidssl.configs import CONFIG_DIR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PRESET = yaml.safe_load((CONFIG_DIR / "protocol" / "dinov3.yaml").read_text())
KEYS = ("n_context", "topk", "radius", "temperature", "window", "restrict_first", "pad_first", "downsample", "ties",
        "upsample")


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "dinov3" / "official.pt", weights_only=True)


def test_notebook_settings_are_the_presets(official):
    s = official["settings"]
    assert (s["MAX_CONTEXT_LENGTH"], s["NEIGHBORHOOD_SIZE"], s["TOPK"], s["TEMPERATURE"]) == (
        PRESET["n_context"], PRESET["radius"], PRESET["topk"], PRESET["temperature"])
    assert s["NEIGHBORHOOD_SHAPE"] == "circle" and PRESET["window"] == "disk"  # the notebook's circle is <=
    assert multiple_frame_size(480, 854, 960, 16) == (960, 1712)


def test_features_and_every_label_cell_equal_the_notebooks(official, tmp_path):
    fn = build_backbone_features(
        "timm", model="vit_small_patch16_dinov3_qkvb", weights=str(FIXTURES / "backbones" / "dinov3.pth"),
        resize=PRESET["resize"], short_side=official["short_side"], mean=PRESET["mean"], std=PRESET["std"],
        model_kwargs=dict(embed_dim=8, depth=2, num_heads=2, img_size=32, patch_size=8))
    sequence = davis(FIXTURES / "dino" / "davis", split="val")[0]
    first = fn(read_frame(sequence.frames[0]))  # D×h×w
    assert tuple(first.shape[1:]) == tuple(official["grid"])
    assert (first.flatten(1).T[:: official["cells_step"]] - official["features_first"]).abs().max() <= 1e-5
    propagate_dataset(FIXTURES / "dino" / "davis", tmp_path, fn, split="val", progress=False, patch=fn.patch,
                      **{k: PRESET[k] for k in KEYS})
    maps = np.stack([read_mask(tmp_path / sequence.name / f"{f.stem}.png") for f in sequence.frames])
    expected = np.stack([read_mask(p) for p in sorted((FIXTURES / "dinov3" / "labels").glob("*.png"))])
    assert maps.shape == expected.shape and len(np.unique(expected)) >= 3
    assert (maps == expected).all(), f"{(maps != expected).sum()} label cells differ"
