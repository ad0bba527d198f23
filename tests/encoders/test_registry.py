"""The registry, pooling, and one Hydra config per registered encoder mirroring its factory."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from vidssl.encoders import ENCODERS, build_encoder, pool

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "encoder"


def test_build_encoder_by_name():
    encoder = build_encoder("r2d3d_18", base_width=4)
    assert encoder.out_channels == 16
    with pytest.raises(KeyError, match="unknown encoder 'resnet50'.*r2d3d_18"):
        build_encoder("resnet50")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_has_a_config_mirroring_its_factory(name):
    path = CONFIGS / f"{name}.yaml"
    assert path.exists(), f"missing {path}"
    cfg = OmegaConf.load(path)
    target = get_method(cfg._target_)
    assert target is ENCODERS[name]
    keys = set(cfg.keys()) - {"_target_"}
    assert keys == set(inspect.signature(target).parameters), f"{path} keys must equal the factory's arguments"


def test_config_instantiates():
    cfg = OmegaConf.load(CONFIGS / "audio_cnn.yaml")
    encoder = instantiate(cfg, base_width=4)
    assert encoder.out_channels == 32


def test_pool_averages_every_axis_after_channels():
    torch.manual_seed(0)
    features = torch.randn(2, 3, 4, 5, 6)
    expected = torch.stack([torch.stack([features[b, c].mean() for c in range(3)]) for b in range(2)])
    torch.testing.assert_close(pool(features), expected)
    assert pool(torch.randn(2, 3, 7)).shape == (2, 3)
    vectors = torch.randn(2, 3)
    assert pool(vectors) is vectors
