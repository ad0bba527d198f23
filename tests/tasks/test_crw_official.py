"""CRW computes what the authors' code computes: loss and gradients against recorded official outputs.

`tests/fixtures/crw/official.pt` was written by `tests/fixtures/crw/record.py`, which ran ajabri/videowalk's
`CRW` (commit in tests/fixtures/crw/OFFICIAL.md) on a small clip with a tiny encoder and pre-drawn edge
drops. Here vidssl's `CRW` gets the same weights, the same clip and the same drop masks, offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidssl.tasks.crw import CRW, affinity_logits, cycle_loss, palindrome_walks, transition_matrices
from tiny_encoders import TinyFrameEncoder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "crw" / "official.pt"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def official() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _crw(official: dict, case: dict, **options) -> CRW:
    encoder = TinyFrameEncoder()
    encoder.load_state_dict(official["encoder"])
    task = CRW(
        encoder=encoder,
        embed_dim=128,
        temperature=case["temperature"],
        edge_dropout=case["edge_dropout"],
        patch_size=case["patch_size"] or None,
        patch_stride=case["patch_stride"] or None,
        patch_jitter_scale=None,  # the official patches were cut without jitter: it is random
        **options,
    )
    task.head.load_state_dict(official["head"])
    return task.double().train()  # recorded in float64: the comparison measures the computation, not rounding


def _masks(case: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    return (case["drop_forward"], case["drop_backward"]) if case["edge_dropout"] > 0 else None


def _loss_and_grad_norms(task: CRW, video: torch.Tensor, masks) -> tuple[float, dict[str, float]]:
    task.zero_grad()
    out = task({"video": video}, edge_masks=masks)
    out["loss"].backward()
    return float(out["loss"].detach()), {name: float(p.grad.norm()) for name, p in task.named_parameters()}


@pytest.mark.parametrize("name", ["dense", "dense_dropout", "patches_dropout"])
def test_loss_and_gradient_norms_equal_the_official_ones(official: dict, name: str) -> None:
    case = official["cases"][name]
    loss, grad_norms = _loss_and_grad_norms(_crw(official, case), official["video"].double(), _masks(case))
    assert loss == pytest.approx(case["loss"], abs=TOLERANCE)
    assert set(grad_norms) == set(case["grad_norms"])
    for param, norm in grad_norms.items():
        assert norm == pytest.approx(case["grad_norms"][param], rel=TOLERANCE, abs=1e-8), param


def test_each_cycle_length_equals_the_official_one(official: dict) -> None:
    case = official["cases"]["dense"]
    task = _crw(official, case)
    with torch.no_grad():
        nodes = task.embed(official["video"].double())
        forward, backward = transition_matrices(affinity_logits(nodes, case["temperature"]))
        walks = palindrome_walks(forward, backward)
    assert len(walks) == len(case["cycle_losses"]) == official["video"].shape[2] - 2  # lengths 2..T-1
    for walk, expected in zip(walks, case["cycle_losses"]):
        assert float(cycle_loss([walk])[0]) == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize(
    ("name", "option"),
    [("dense", {"shortest_cycle": 1}), ("dense_dropout", {"independent_edge_dropout": True}),
     ("patches_dropout", {"independent_edge_dropout": True})],
)
def test_the_options_depart_from_the_official_loss(official: dict, name: str, option: dict) -> None:
    # The comparison above can fail: each non-default option moves the loss or the gradients well past
    # the tolerance on the same weights, clip and masks.
    case = official["cases"][name]
    loss, grad_norms = _loss_and_grad_norms(_crw(official, case, **option), official["video"].double(), _masks(case))
    departures = [abs(loss - case["loss"])] + [
        abs(norm - case["grad_norms"][param]) / case["grad_norms"][param] for param, norm in grad_norms.items()
    ]
    assert max(departures) > 100 * TOLERANCE


def test_backward_drops_include_the_forward_ones(official: dict) -> None:
    # What the official in-place drop implies: the backward transitions lost every forward-dropped edge.
    case = official["cases"]["dense_dropout"]
    task = _crw(official, case)
    with torch.no_grad():
        logits = affinity_logits(task.embed(official["video"].double()), case["temperature"])
        forward, backward = transition_matrices(logits, case["drop_forward"], case["drop_backward"])
    assert (forward[case["drop_forward"]] == 0).all()
    assert (backward.transpose(-1, -2)[case["drop_forward"]] == 0).all()
    assert (backward[case["drop_backward"]] == 0).all()
