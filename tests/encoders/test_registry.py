"""Pooling, and every Hydra encoder config (vidssl/configs/encoder/, the registry) mirroring its factory."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from vidssl.configs import CONFIG_DIR
from vidssl.encoders import pool, r2d3d_18

CONFIGS = CONFIG_DIR / "encoder"


def test_an_encoder_factory_builds_by_its_width():
    assert r2d3d_18(base_width=4).out_channels == 16


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_encoder_config_mirrors_its_factory(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    target = get_method(cfg._target_)
    assert target.__module__.startswith("vidssl.encoders.")
    keys = set(cfg.keys()) - {"_target_"}
    assert keys == set(inspect.signature(target).parameters), f"vidssl/configs/encoder/{name}.yaml keys must equal its arguments"


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
