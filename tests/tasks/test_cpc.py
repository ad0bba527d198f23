"""CPC: shapes, gradients, the log-bilinear InfoNCE against a slow reference, no peeking at the future."""

from __future__ import annotations

import pytest
import torch

from vidssl.tasks.cpc import CPC
from tiny_encoders import TinyVideoEncoder


def _video(b: int = 3, num_seq: int = 5, seq_len: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, num_seq * seq_len, size, size, generator=torch.Generator().manual_seed(seed))


def _task(**kw) -> CPC:
    return CPC(encoder=TinyVideoEncoder(), **{"num_seq": 5, "pred_step": 2, "hidden_size": 6, **kw})


def test_forward_shapes_finite_and_gradients_reach_every_part() -> None:
    torch.manual_seed(0)
    task = _task()
    out = task({"video": _video()})
    assert set(out) == {"loss", "accuracy", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "similarity_gap"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for part in (task.encoder, task.context, task.predictors):
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(task.predictors) == 2


def test_loss_is_the_log_bilinear_infonce_over_clips_and_steps() -> None:
    """Slow reference: score(z_j, c_b, k) = z_jᵀ W_k c_b for every (clip, step) candidate j."""
    torch.manual_seed(0)
    task = _task(temperature=0.5)
    video = _video()
    out = task({"video": video})
    with torch.no_grad():
        z = task.embed(video)  # (B, N, D)
        b, n = z.shape[:2]
        k_steps, observed = 2, 3
        losses, hits = [], 0
        for bi in range(b):
            # The context: run the GRU one block at a time.
            h = torch.zeros(1, 1, 6)
            for t in range(observed):
                _, h = task.context(z[bi : bi + 1, t : t + 1], h)
            c = h[0, 0]
            for k in range(k_steps):
                candidates = [(bj, observed + kj) for bj in range(b) for kj in range(k_steps)]
                scores = torch.stack([z[bj, t] @ (task.predictors[k].weight @ c) for bj, t in candidates]) / 0.5
                positive = candidates.index((bi, observed + k))
                losses.append(-torch.log_softmax(scores, 0)[positive])
                hits += int(scores.argmax() == positive)
    assert out["loss"].item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
    assert out["accuracy"].item() == pytest.approx(hits / (b * k_steps))


def test_predictions_never_see_the_future_blocks() -> None:
    torch.manual_seed(0)
    task = _task()
    video = _video()
    changed = video.clone()
    changed[:, :, 3 * 2 :] = torch.randn_like(changed[:, :, 3 * 2 :])  # the 2 future blocks
    with torch.no_grad():
        torch.testing.assert_close(task.predict(task.embed(video)), task.predict(task.embed(changed)))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="pred_step"):
        _task(pred_step=5)
    with pytest.raises(ValueError, match="num_seq=5"):
        _task()({"video": torch.randn(1, 3, 9, 8, 8)})
