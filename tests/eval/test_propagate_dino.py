"""protocol=dino against facebookresearch/dino's eval_video_segmentation.py (tests/fixtures/dino/, see OFFICIAL.md).

The official script ran on a 22-frame synthetic clip with a tiny random-init DINO ViT (patch 8, the
weights of tests/fixtures/backbones/dino_pretrain.pth); vidssl loads the same file through timm,
prepares frames as read_frame does, and propagates with the preset's settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import vidssl.eval.propagate as propagate_module
from vidssl.datasets.formats import davis, read_mask
from vidssl.eval.backbone_features import BackboneFeatures, build_backbone_features, dino_frame_size
from vidssl.eval.propagate import propagate_dataset, read_frame
from vidssl.configs import CONFIG_DIR

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONFIGS = CONFIG_DIR / "protocol"
PROPAGATION_KEYS = ("n_context", "topk", "radius", "temperature", "window", "restrict_first", "pad_first",
                    "downsample", "ties", "upsample")


@pytest.fixture(scope="module")
def official():
    return torch.load(FIXTURES / "dino" / "official.pt", weights_only=True)


@pytest.fixture(scope="module")
def preset():
    return yaml.safe_load((CONFIGS / "dino.yaml").read_text())


@pytest.fixture(scope="module")
def feature_fn(preset) -> BackboneFeatures:
    return build_backbone_features(
        "timm", model="vit_small_patch8_224.dino", weights=str(FIXTURES / "backbones" / "dino_pretrain.pth"),
        resize=preset["resize"], short_side=preset["short_side"], mean=preset["mean"], std=preset["std"],
        model_kwargs=dict(embed_dim=8, depth=2, num_heads=2, img_size=32))


@pytest.fixture(scope="module")
def sequence():
    return davis(FIXTURES / "dino" / "davis", split="val")[0]


def test_dino_read_frame_size():
    assert dino_frame_size(480, 854) == (480, 832)  # DAVIS 480p
    assert dino_frame_size(854, 480) == (832, 480)
    assert dino_frame_size(36, 60) == (480, 768)
    assert dino_frame_size(1080, 1920, 960) == (960, 1664)


def test_features_equal_the_scripts(official, feature_fn, sequence):
    step = official["cells_step"]
    for key, index in (("features_first", 0), ("features_last", len(sequence.frames) - 1)):
        frame = read_frame(sequence.frames[index])
        with torch.no_grad():
            raw = feature_fn.backbone(feature_fn.prepare(frame)[None])[0]  # D×h×w, before the L2 norm
        assert tuple(raw.shape[1:]) == tuple(official["grid"])
        tokens = raw.flatten(1).T[::step]
        assert (tokens - official[key]).abs().max() <= 1e-5
        normalised = feature_fn(frame).flatten(1).T[::step]
        assert (normalised - F.normalize(official[key], dim=1)).abs().max() <= 1e-5


def test_every_label_cell_equals_the_scripts(official, preset, feature_fn, sequence, tmp_path, monkeypatch):
    soft = []
    original = propagate_module.label_map

    def keep(pred, size, **kwargs):
        soft.append(pred.clone())
        return original(pred, size, **kwargs)

    monkeypatch.setattr(propagate_module, "label_map", keep)
    protocol = {k: preset[k] for k in PROPAGATION_KEYS}
    propagate_dataset(FIXTURES / "dino" / "davis", tmp_path, feature_fn, split="val", progress=False,
                      patch=feature_fn.patch, **protocol)
    maps = np.stack([read_mask(tmp_path / sequence.name / f"{f.stem}.png") for f in sequence.frames])
    expected = np.stack([read_mask(p) for p in sorted((FIXTURES / "dino" / "labels").glob("*.png"))])
    assert maps.shape == expected.shape and len(maps) >= 20
    assert len(np.unique(expected)) >= 3  # the objects survive: the labels are not trivially background
    assert (maps == expected).all(), f"{(maps != expected).sum()} label cells differ"
    # the soft labels fed back agree too: to float rounding in most cells; where two candidates' scores
    # are within rounding of each other at the k-th place, the sums differ in order and either may be
    # kept, moving that cell's soft labels by a few 1e-4 after 21 frames (measured: 12 of 206 cells > 1e-5)
    last = soft[-1].flatten(0, 1)[:: official["cells_step"]]
    num_labels = official["soft_last"].shape[1]
    diff = (last[:, :num_labels] - official["soft_last"]).abs().amax(dim=1)
    assert diff.median() <= 1e-6 and diff.max() <= 1e-3


def test_ties_keep_every_candidate_equal_to_the_kth():
    """Keys duplicated across context frames tie exactly: DINO keeps them all, plain top-k keeps k."""
    from vidssl.eval.propagate import _reference_step, propagate_step

    g = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(6, 7, 4, generator=g), dim=-1)
    key = F.normalize(torch.randn(1, 6, 7, 4, generator=g), dim=-1)
    keys = key.repeat(3, 1, 1, 1)  # three identical context frames: every score appears three times
    values = torch.softmax(torch.randn(3, 6, 7, 3, generator=g), dim=-1)
    args = dict(topk=5, radius=2, temperature=0.1, window="square")
    tied = propagate_step(query, keys, values, ties=True, tile=3, **args)
    torch.testing.assert_close(tied, _reference_step(query, keys, values, ties=True, **args))
    # with ties, the result is that of the one frame seen with k rounded up to whole tie groups
    plain = propagate_step(query, keys, values, ties=False, tile=3, **args)
    assert not torch.allclose(tied, plain)
    # three copies of each candidate: top-5 with ties = top-2 distinct scores ×3 = 6 candidates, the
    # same weights as the top-2 of the single frame with the copies' labels averaged
    single = propagate_step(query, key, values.mean(0, keepdim=True), topk=2, radius=2, temperature=0.1,
                            window="square", tile=3)
    torch.testing.assert_close(tied, single)
