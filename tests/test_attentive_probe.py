"""The attentive probe: equal to the official AttentiveClassifier on copied weights (tests/fixtures/vjepa/probe.pt),
and the grid's two figures on separable tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidssl.eval.attentive_probe import AttentiveClassifier, ViewCrop, attentive_probe, holdout_split

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vjepa"
sys.path.insert(0, str(FIXTURES))
from vjepa_seeded import fill_  # noqa: E402


def test_probe_equals_official_attentive_classifier():
    expected = torch.load(FIXTURES / "probe.pt", weights_only=True)
    probe = AttentiveClassifier(embed_dim=64, num_classes=5, num_heads=4, depth=4).double()
    fill_(probe)
    tokens = torch.randn(3, 20, 64, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    logits = probe(tokens)
    assert torch.allclose(logits, expected["logits"].double(), atol=1e-5, rtol=1e-5)
    logits.sum().backward()
    grads = {k: p.grad.norm() for k, p in probe.named_parameters()}
    assert grads.keys() == expected["grad_norms"].keys()
    for key, norm in expected["grad_norms"].items():
        assert abs(float(grads[key]) - float(norm)) < 1e-5, key


def test_grid_reports_both_figures_on_separable_tokens():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 2

    def split(n: int):
        labels = torch.arange(n) % 3
        views = [centres[labels][:, None, :] + 0.5 * torch.randn(n, 6, 16, generator=g) for _ in range(2)]
        return views, labels

    metrics = attentive_probe(split(60), split(30), num_classes=3, holdout=0.2, lrs=(5e-3, 1e-6), wds=(0.01,),
                              epochs=8, batch_size=10, num_heads=2, depth=2)
    assert len(metrics["grid"]) == 2 and metrics["holdout_videos"] == 12
    assert metrics["val_picked_top1"] >= max(r["test_top1"] for r in metrics["grid"])
    assert metrics["val_picked_top1"] > 90 and metrics["clean_top1"] > 90  # chance: 33%
    assert metrics["clean_lr"] == 5e-3  # the held-out part prefers the probe that learned


def test_holdout_takes_a_share_of_every_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    kept, held = holdout_split(labels, 0.2, seed=0)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(16))
    assert labels[held].tolist().count(0) == 2 and labels[held].tolist().count(1) == 1 and 2 not in labels[held]


def test_view_crops_cover_the_long_side():
    frames = torch.arange(40, dtype=torch.uint8).repeat(2, 20, 1).unsqueeze(-1).repeat(1, 1, 1, 3)  # T×H×W×3, W=40
    left, right = ViewCrop(20, 0, 3)(frames), ViewCrop(20, 2, 3)(frames)
    assert left.shape == (3, 2, 20, 20) and (left[0, 0, 0, 0] < right[0, 0, 0, -1])


def test_one_training_clip_per_class_is_refused_before_any_probe_trains(monkeypatch: pytest.MonkeyPatch):
    import vidssl.eval.attentive_probe as probe_module

    def no_training(*args, **kwargs):
        raise AssertionError("a probe was trained before the refusal")

    monkeypatch.setattr(probe_module, "train_probe_grid", no_training)
    views = [torch.randn(3, 4, 8)]
    with pytest.raises(ValueError, match="no class has two training clips"):
        attentive_probe((views, torch.tensor([0, 1, 2])), (views, torch.tensor([0, 1, 2])), num_classes=3)
