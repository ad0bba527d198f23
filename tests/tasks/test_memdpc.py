"""MemDPC: memory addressing, reading, gradients, bidirectional prediction, no peeking at the future."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vidssl.tasks.memdpc import MemDPC
from tiny_encoders import TinyVideoEncoder


def _video(b: int = 3, num_seq: int = 4, seq_len: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, num_seq * seq_len, size, size, generator=torch.Generator().manual_seed(seed))


def _task(**kw) -> MemDPC:
    kw = {"num_seq": 4, "pred_step": 2, "memory_size": 16, **kw}
    return MemDPC(encoder=TinyVideoEncoder(), **kw)


def test_addressing_is_a_distribution_over_slots_and_temperature_sharpens_it() -> None:
    torch.manual_seed(0)
    task = _task()
    hidden = torch.randn(2, 8, 3, 3)
    weights = task.address(hidden)
    assert weights.shape == (2, 16, 3, 3)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(2, 3, 3))
    torch.testing.assert_close(weights, torch.softmax(task.addresser(hidden), dim=1))

    def entropy(w: torch.Tensor) -> float:
        return -(w * w.log()).sum(1).mean().item()

    sharp = _task(memory_temperature=0.1)
    sharp.load_state_dict(task.state_dict())
    assert entropy(sharp.address(hidden)) < entropy(weights)


def test_read_is_the_weighted_sum_of_memory_entries() -> None:
    torch.manual_seed(0)
    task = _task()
    weights = torch.softmax(torch.randn(2, 16, 2, 3), dim=1)
    got = task.read(weights)
    want = torch.zeros(2, 8, 2, 3)
    for b in range(2):
        for y in range(2):
            for x in range(3):
                for m in range(16):
                    want[b, :, y, x] += weights[b, m, y, x] * task.memory[m]
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    # All weight on one slot reads exactly that entry.
    one_hot = torch.zeros(1, 16, 1, 1)
    one_hot[0, 5] = 1
    torch.testing.assert_close(task.read(one_hot)[0, :, 0, 0], task.memory[5].detach())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_finite_and_gradients_reach_encoder_memory_and_predictor(bidirectional: bool) -> None:
    torch.manual_seed(0)
    task = _task(bidirectional=bidirectional)
    out = task({"video": _video()})
    assert set(out) == {"loss", "accuracy", "pred_step", "memory_entropy", "memory_used", "memory_usage_entropy",
                        "embedding_std", "embedding_rankme", "embedding_rank_fraction", "similarity_gap"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert 0 <= out["memory_entropy"] <= math.log(16) + 1e-5
    out["loss"].backward()
    parts = [task.encoder, task.addresser, task.aggregator] + ([task.aggregator_backward] if bidirectional else [])
    for part in parts:
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert task.memory.grad is not None and task.memory.grad.abs().sum() > 0
    assert (task.aggregator_backward is not None) == bidirectional


def test_forward_predictions_never_see_the_future_blocks() -> None:
    torch.manual_seed(0)
    task = _task(bidirectional=False, hidden_dropout=0.0)  # deterministic
    captured = []
    task.addresser.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    video = _video()
    task({"video": video})
    changed = video.clone()
    changed[:, :, 2 * 3 :] = torch.randn_like(changed[:, :, 2 * 3 :])  # the 2 future blocks
    task({"video": changed})
    assert len(captured) == 4
    for a, c in zip(captured[:2], captured[2:]):
        torch.testing.assert_close(a, c)


def test_backward_direction_predicts_the_first_blocks_from_the_last() -> None:
    torch.manual_seed(0)
    task = _task(bidirectional=True, hidden_dropout=0.0)
    captured = []
    task.addresser.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    video = _video()
    task({"video": video})
    changed = video.clone()
    changed[:, :, : 2 * 3] = torch.randn_like(changed[:, :, : 2 * 3])  # the first 2 blocks
    task({"video": changed})
    # Calls 0-1: forward direction (reads the changed blocks), 2-3: backward (must not).
    assert not torch.allclose(captured[0], captured[4])
    for a, c in zip(captured[2:4], captured[6:8]):
        torch.testing.assert_close(a, c)


def test_curriculum_and_bad_arguments() -> None:
    task = _task(pred_step_schedule=[1, 3])
    assert task({"video": _video()})["pred_step"] == 1
    task.on_train_step_end(10, 10)
    assert task({"video": _video()})["pred_step"] == 3
    with pytest.raises(ValueError, match="memory_size"):
        _task(memory_size=0)
    with pytest.raises(ValueError, match="memory_temperature"):
        _task(memory_temperature=0.0)
    with pytest.raises(ValueError, match="pred_step"):
        _task(pred_step=4)


def test_matches_the_official_memdpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same addressing logits, score matrices, losses and gradient norms as TengdaHan/MemDPC's MemDPC_BD
    (copied weights, same input, same dropout masks in both ConvGRUs), the same batch-norm running
    statistics after the step, and the same loss in eval mode."""
    import vidssl.tasks.memdpc as memdpc_module
    from fixtures.dpc.official_state import ReplayDropout, assert_grad_norms, converted_case

    task, video, expected = converted_case("memdpc", tmp_path)
    s = expected["setup"]
    assert task.aggregator.hidden_dropout.p == s["p"]
    task.aggregator.hidden_dropout = ReplayDropout(s["p"], s["seed_dropout"])
    task.aggregator_backward.hidden_dropout = ReplayDropout(s["p"], s["seed_dropout_backward"])
    logits, scores = [], []
    task.addresser.register_forward_hook(lambda m, i, o: logits.append(o.detach()))
    original = memdpc_module.dense_prediction_loss

    def capture(pred, target, **kwargs):
        rows = pred.detach().permute(0, 1, 3, 4, 2).reshape(-1, pred.shape[2])  # (b, k, y, x) rows
        cols = target.detach().permute(0, 1, 3, 4, 2).reshape(-1, target.shape[2])
        scores.append(rows @ cols.T)
        return original(pred, target, **kwargs)

    monkeypatch.setattr(memdpc_module, "dense_prediction_loss", capture)
    task.train()
    out = task({"video": video})
    out["loss"].backward()
    torch.testing.assert_close(torch.stack(logits, 1), expected["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(scores), expected["scores"], atol=1e-5, rtol=1e-5)
    assert out["loss"].item() == pytest.approx(expected["loss"].item(), abs=1e-5)
    assert out["accuracy"].item() == pytest.approx(expected["top1"].mean().item())
    assert_grad_norms(task, expected["grad_norms"])
    torch.testing.assert_close(task.encoder.bn1.running_mean, expected["running_mean"])

    task.eval()
    with torch.no_grad():
        assert task({"video": video})["loss"].item() == pytest.approx(expected["eval_loss"].item(), abs=1e-5)


def test_paper_training_options_reach_every_head() -> None:
    torch.manual_seed(0)
    task = _task(hidden_dropout=0.1, head_init="orthogonal")  # MemDPC's gain: 0.1
    assert task.aggregator.hidden_dropout.p == task.aggregator_backward.hidden_dropout.p == 0.1
    for weight in (task.addresser[0].weight, task.aggregator_backward.cells[0].candidate.weight):
        w = weight.flatten(1)
        torch.testing.assert_close(w @ w.T, 0.01 * torch.eye(w.shape[0]), atol=1e-6, rtol=0)


def test_train_benchmark_official_row_refuses_what_it_cannot_compare(tmp_path: Path) -> None:
    from vidssl.benchmarks.train import _compose, _official_model

    with pytest.raises(ValueError, match="no official model"):
        _official_model(_compose(["task=simclr", "encoder=r2d3d_18"]), tmp_path)
    with pytest.raises(ValueError, match="width 64"):
        _official_model(_compose(["task=memdpc", "encoder.base_width=8"]), tmp_path)
    with pytest.raises(FileNotFoundError, match="official="):
        _official_model(_compose(["task=memdpc_paper"]), tmp_path / "missing")
