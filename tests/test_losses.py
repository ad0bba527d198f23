"""Shared losses against slow, obvious references written with loops (or float64 log-domain maths)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidssl.losses import (
    MoCoQueue,
    dense_info_nce,
    info_nce,
    momentum_update,
    nt_xent,
    sinkhorn_knopp,
    sinkhorn_to_tolerance,
)


def _ce_of_positive(logits: list[float], positive: int) -> float:
    """-log softmax(logits)[positive], one anchor at a time in float64."""
    top = max(logits)
    return -(logits[positive] - top - math.log(sum(math.exp(v - top) for v in logits)))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------- InfoNCE family


def test_info_nce_with_negatives_matches_loop_reference():
    torch.manual_seed(0)
    q, k, neg = torch.randn(5, 4), torch.randn(5, 4), torch.randn(7, 4)
    temperature = 0.2
    qn, kn, nn_ = _unit(q), _unit(k), _unit(neg)
    expected = 0.0
    for i in range(5):
        logits = [_dot(qn[i], kn[i]) / temperature] + [_dot(qn[i], nn_[m]) / temperature for m in range(7)]
        expected += _ce_of_positive(logits, 0) / 5
    assert info_nce(q, k, neg, temperature=temperature) == pytest.approx(expected, rel=1e-5)


def test_info_nce_in_batch_matches_loop_reference():
    torch.manual_seed(1)
    q, k = torch.randn(6, 3), torch.randn(6, 3)
    expected = 0.0
    for i in range(6):
        logits = [_dot(q[i], k[j]) / 0.5 for j in range(6)]  # normalize=False: raw dot products
        expected += _ce_of_positive(logits, i) / 6
    assert info_nce(q, k, None, temperature=0.5, normalize=False) == pytest.approx(expected, rel=1e-5)


def test_info_nce_gradients_and_bad_shapes():
    q = torch.randn(4, 3, requires_grad=True)
    info_nce(q, torch.randn(4, 3)).backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="negative_keys has D=2"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 2))


def test_dense_info_nce_matches_loop_reference():
    torch.manual_seed(2)
    b, n, d = 2, 3, 4
    pred, target = torch.randn(b, n, d), torch.randn(b, n, d)
    expected_loss, hits = 0.0, 0
    anchors = [(i, j) for i in range(b) for j in range(n)]
    for i, j in anchors:
        # every (b', n') of the batch is a candidate; the positive is the same (b, n)
        logits = [_dot(pred[i, j], target[ib, jn]) for ib, jn in anchors]
        positive = anchors.index((i, j))
        expected_loss += _ce_of_positive(logits, positive) / len(anchors)
        hits += int(max(range(len(logits)), key=logits.__getitem__) == positive)
    loss, accuracy = dense_info_nce(pred, target)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy == pytest.approx(hits / len(anchors))


def test_dense_info_nce_is_perfect_on_separated_features():
    # Orthogonal, scaled features: every anchor's positive dominates, the loss is near zero.
    target = (10 * torch.eye(6)).reshape(2, 3, 6)
    loss, accuracy = dense_info_nce(target.clone(), target)
    assert accuracy == 1.0 and loss < 1e-6
    loss_t, _ = dense_info_nce(target.clone(), target, temperature=10.0, normalize=True)
    assert loss_t > 1.0  # a high temperature flattens the logits
    with pytest.raises(ValueError, match="B×N×D"):
        dense_info_nce(torch.randn(2, 3), torch.randn(2, 3))


def test_nt_xent_matches_loop_reference():
    torch.manual_seed(3)
    n, temperature = 4, 0.3
    z1, z2 = torch.randn(n, 5), torch.randn(n, 5)
    z = _unit(torch.cat([z1, z2]))
    expected = 0.0
    for a in range(2 * n):
        partner = (a + n) % (2 * n)
        others = [c for c in range(2 * n) if c != a]  # 2N-1 candidates: the partner and 2N-2 negatives
        logits = [_dot(z[a], z[c]) / temperature for c in others]
        expected += _ce_of_positive(logits, others.index(partner)) / (2 * n)
    assert nt_xent(z1, z2, temperature) == pytest.approx(expected, rel=1e-5)


def test_nt_xent_floor_for_identical_orthogonal_views():
    z = torch.eye(4)
    # partner similarity 1, negatives 0: loss = log(1 + (2N-2)·e^{-1/T}) → ~0 for small T
    assert nt_xent(z, z.clone(), 0.05) == pytest.approx(math.log(1 + 6 * math.exp(-20)), abs=1e-7)


# ---------------------------------------------------------------- MoCo


def test_moco_queue_is_a_ring_buffer():
    torch.manual_seed(4)
    queue = MoCoQueue(dim=3, size=5)
    reference = [row.clone() for row in queue.queue]
    pointer = 0
    for batch in (2, 2, 2, 3, 7):  # wraps around, and one batch larger than the queue
        keys = torch.randn(batch, 3)
        queue.enqueue(keys)
        for row in keys:  # the obvious ring: one slot at a time
            reference[pointer] = row
            pointer = (pointer + 1) % 5
        torch.testing.assert_close(queue.negatives(), torch.stack(reference))
        assert int(queue.ptr) == pointer


def test_moco_queue_negatives_are_a_copy_and_keys_are_detached():
    queue = MoCoQueue(dim=2, size=4)
    negatives = queue.negatives()
    keys = torch.randn(2, 2, requires_grad=True)
    queue.enqueue(keys)
    assert not torch.equal(negatives[:2], queue.queue[:2])
    assert not queue.queue.requires_grad
    assert set(dict(queue.named_buffers())) == {"queue", "ptr"}  # saved in checkpoints
    with pytest.raises(ValueError, match="dim 3"):
        queue.enqueue(torch.randn(2, 3))


def test_momentum_update_matches_formula():
    torch.manual_seed(5)
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    momentum_update(online, target, 0.9)
    for name, p in online.named_parameters():
        torch.testing.assert_close(dict(target.named_parameters())[name], 0.9 * before[name] + 0.1 * p)
    momentum_update(online, target, 0.0)  # m = 0 copies
    torch.testing.assert_close(target.weight, online.weight)
    with pytest.raises(ValueError, match="differ in parameters"):
        momentum_update(online, nn.Sequential(nn.Linear(3, 2)), 0.9)


# ---------------------------------------------------------------- Sinkhorn-Knopp


def sinkhorn_reference(scores, epsilon, iterations, row_weights=None, col_weights=None) -> torch.Tensor:
    """SwAV's iteration (column then row normalisation, starting from exp(scores/ε) with equal row
    weights) written in the log domain in float64: slow and obviously right."""
    x = scores.double() / epsilon
    n, k = x.shape
    a = torch.ones(n, dtype=torch.float64) if row_weights is None else row_weights.double()
    b = torch.ones(k, dtype=torch.float64) if col_weights is None else col_weights.double()
    log_row_target = torch.log(n * a / a.sum())
    log_col_target = torch.log(n * b / b.sum())
    log_q = x
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + log_col_target[None, :]
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) + log_row_target[:, None]
    return log_q.exp()


def swav_naive(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The SwAV form as published: exponentiate, then alternate normalisations (overflows for large scores)."""
    q = torch.exp(scores / epsilon).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).T


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_float64_log_domain_reference(scale, iterations):
    torch.manual_seed(6)
    scores = scale * torch.randn(200, 12)
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=iterations)
    assert q.dtype == torch.float32
    expected = sinkhorn_reference(scores, 0.05, iterations)
    torch.testing.assert_close(q.double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(200))  # rows: one assignment per sample


def test_sinkhorn_matches_the_swav_form_where_that_is_finite():
    torch.manual_seed(7)
    scores = F.normalize(torch.randn(300, 16), dim=1) @ F.normalize(torch.randn(20, 16), dim=1).T
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3), swav_naive(scores, 0.05, 3), rtol=1e-4, atol=1e-6)


def test_sinkhorn_is_finite_for_scores_up_to_1e3():
    torch.manual_seed(8)
    scores = 1e3 * (2 * torch.rand(400, 30) - 1)  # scores/ε up to ±2e4: exp overflows in any dtype
    assert not torch.isfinite(swav_naive(scores, 0.05, 3)).all()  # the naive form fails here ...
    for iterations in (1, 3, 20):
        q = sinkhorn_knopp(scores, epsilon=0.05, iterations=iterations)  # ... this one does not
        assert torch.isfinite(q).all() and (q >= 0).all()
        torch.testing.assert_close(q.sum(dim=1), torch.ones(400))
        # and it still agrees with the float64 log-domain reference (fp32 holds scores/ε to ~1e-3)
        torch.testing.assert_close(q.double(), sinkhorn_reference(scores, 0.05, iterations), rtol=0, atol=2e-3)
    # extreme values in both directions, and a single huge column
    extreme = torch.tensor([[1e3, -1e3, 0.0], [-1e3, -1e3, -1e3], [0.0, 1e3, 1e3]]).repeat(4, 1)
    assert torch.isfinite(sinkhorn_knopp(extreme, 0.05, 3)).all()


def test_sinkhorn_ignores_per_column_offsets_even_huge_ones():
    # exp(x + c_k) only rescales column k, which the first column normalisation undoes; offsets of
    # ±50 (±1000 after dividing by ε) force the log-domain fallback and must not change the answer.
    torch.manual_seed(9)
    scores = torch.randn(300, 10)
    offsets = 50 * torch.randn(10)
    torch.testing.assert_close(
        sinkhorn_knopp(scores + offsets, 0.05, 3), sinkhorn_knopp(scores, 0.05, 3), rtol=2e-3, atol=1e-5
    )


def test_sinkhorn_equipartitions_uniform_and_given_marginals():
    torch.manual_seed(10)
    n, k = 600, 8
    scores = torch.randn(n, k) + torch.linspace(0, 2, k)  # a strong prior towards the last clusters
    q = sinkhorn_knopp(scores, epsilon=0.1, iterations=100)
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), n / k), rtol=1e-3, atol=0)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n))

    cluster_weights = torch.arange(1.0, k + 1)  # non-uniform cluster marginal r ∝ 1..K
    q = sinkhorn_knopp(scores, epsilon=0.1, iterations=100, marginals=(None, cluster_weights))
    torch.testing.assert_close(q.sum(dim=0), n * cluster_weights / cluster_weights.sum(), rtol=1e-3, atol=0)

    sample_weights = torch.rand(n) + 0.5  # row n sums to N·a_n
    q = sinkhorn_knopp(scores, epsilon=0.1, iterations=100, marginals=(sample_weights, None))
    torch.testing.assert_close(q.sum(dim=1), n * sample_weights / sample_weights.sum())
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), n / k), rtol=1e-3, atol=0)
    expected = sinkhorn_reference(scores, 0.1, 100, row_weights=sample_weights)
    torch.testing.assert_close(q.double(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_dtypes():
    torch.manual_seed(11)
    scores = torch.randn(50, 6)
    q64 = sinkhorn_knopp(scores.double(), 0.05, 3)
    assert q64.dtype == torch.float64
    torch.testing.assert_close(q64, sinkhorn_reference(scores, 0.05, 3), rtol=1e-10, atol=1e-12)
    q16 = sinkhorn_knopp(scores.bfloat16(), 0.05, 3)  # half precision is widened, not computed in bf16
    assert q16.dtype == torch.float32
    torch.testing.assert_close(q16.double(), sinkhorn_reference(scores.bfloat16().float(), 0.05, 3), rtol=1e-4, atol=1e-6)
    scores.requires_grad_(True)
    assert not sinkhorn_knopp(scores, 0.05, 3).requires_grad  # codes are targets


def test_sinkhorn_rejects_bad_input():
    good = torch.randn(4, 3)
    for bad in (float("nan"), float("inf"), float("-inf")):
        scores = good.clone()
        scores[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            sinkhorn_knopp(scores)
    with pytest.raises(ValueError, match="2-D"):
        sinkhorn_knopp(torch.randn(4))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(good, epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(good, iterations=0)
    with pytest.raises(ValueError, match=r"marginals\[1\] \(columns\) must have shape \(3,\)"):
        sinkhorn_knopp(good, marginals=(None, torch.ones(4)))
    with pytest.raises(ValueError, match="strictly positive"):
        sinkhorn_knopp(good, marginals=(torch.tensor([1.0, 0.0, 1.0, 1.0]), None))


def _row_scaling_change(scores: torch.Tensor, epsilon: float, iterations: int) -> float:
    """Σ_n |β_n/β'_n − 1| between iterations ``iterations`` and ``iterations + 1`` of plain fp64 Sinkhorn
    (β: the row scaling of exp(scores/ε), starting from 1/N), written out independently."""
    kernel = torch.exp(scores.double() / epsilon)
    n, k = kernel.shape
    beta = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for i in range(iterations + 1):
        alpha = (1.0 / k) / (kernel.T @ beta)
        new = (1.0 / n) / (kernel @ alpha)
        change = float((beta / new - 1).abs().sum())
        beta = new
    return change


def test_sinkhorn_to_tolerance_stops_where_the_row_scaling_settles():
    torch.manual_seed(0)
    scores = torch.randn(300, 8, dtype=torch.float64) * 0.3 + torch.randn(1, 8, dtype=torch.float64) * 0.3
    q, iterations = sinkhorn_to_tolerance(scores, 0.05, tolerance=0.1)
    assert iterations % 10 == 1 and iterations > 1  # checked after iterations 1, 11, 21, ...
    assert _row_scaling_change(scores, 0.05, iterations - 1) <= 0.1 < _row_scaling_change(scores, 0.05, iterations - 11)
    # the same as that many fixed iterations, and near the marginals
    torch.testing.assert_close(q, sinkhorn_knopp(scores, 0.05, iterations), rtol=1e-12, atol=1e-12)
    assert torch.allclose(q.sum(0), torch.full((8,), 300 / 8, dtype=torch.float64), rtol=0.01)
    # a tighter tolerance takes longer and gets closer; the cap is respected
    tight, more = sinkhorn_to_tolerance(scores, 0.05, tolerance=1e-8)
    assert more > iterations and (tight.sum(0) - 300 / 8).abs().max() < (q.sum(0) - 300 / 8).abs().max()
    assert sinkhorn_to_tolerance(scores, 0.05, tolerance=1e-8, max_iterations=15)[1] == 15
    with pytest.raises(ValueError, match="tolerance"):
        sinkhorn_to_tolerance(scores, 0.05, tolerance=0.0)
    with pytest.raises(ValueError, match="max_iterations"):
        sinkhorn_to_tolerance(scores, 0.05, max_iterations=0)


def test_sinkhorn_to_tolerance_in_fp32_with_log_domain_steps():
    """Scores far beyond exp's range: the stopping rule still sees the true row scaling."""
    torch.manual_seed(1)
    scores = torch.randn(200, 6) * 30
    q32, n32 = sinkhorn_to_tolerance(scores, 0.05, tolerance=0.1)
    q64, n64 = sinkhorn_to_tolerance(scores.double(), 0.05, tolerance=0.1)
    assert n32 == n64 and torch.equal(q32.argmax(1), q64.argmax(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast runs matrix-vector products in fp16")
def test_sinkhorn_ignores_autocast_on_cuda():
    torch.manual_seed(15)
    scores = torch.randn(4096, 64, device="cuda")
    expected = sinkhorn_knopp(scores, 0.05, 3)
    with torch.autocast("cuda", dtype=torch.float16):
        q = sinkhorn_knopp(scores, 0.05, 3)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.cpu().double(), sinkhorn_reference(scores.cpu(), 0.05, 3), rtol=1e-4, atol=1e-6)
