"""Health monitors against slow, obvious references on matrices whose answer is known."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from vidssl.monitors import (
    CollapseRule,
    CollapseWatch,
    cluster_sizes,
    embedding_std,
    rankme,
    similarity_gap,
    slot_usage,
)


def reference_std(z: np.ndarray, normalize: bool = True) -> float:
    """Row by row normalisation, then each column's sample std, then their mean: loops only."""
    rows = [list(r) for r in z.astype(np.float64)]
    if normalize:
        rows = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
    n, d = len(rows), len(rows[0])
    stds = []
    for j in range(d):
        column = [rows[i][j] for i in range(n)]
        mean = sum(column) / n
        stds.append(math.sqrt(sum((v - mean) ** 2 for v in column) / (n - 1)))
    return sum(stds) / d


def reference_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """Singular values as square roots of the eigenvalues of zᵀz, then exp(entropy) term by term."""
    eigen = np.linalg.eigvalsh(z.astype(np.float64).T @ z.astype(np.float64))
    sigma = [math.sqrt(max(e, 0.0)) for e in eigen][-min(z.shape):]
    total = sum(sigma)
    if total == 0:
        return 1.0
    entropy = 0.0
    for s in sigma:
        p = s / total + eps
        entropy -= p * math.log(p)
    return math.exp(entropy)


@pytest.mark.parametrize("name", ["full rank", "rank one", "zeros", "random"])
def test_rankme_and_std_match_the_references(name):
    g = torch.Generator().manual_seed(0)
    z = {"full rank": torch.eye(16, 8) * 3 + torch.eye(16, 8).roll(8, 0),
         "rank one": torch.outer(torch.randn(16, generator=g), torch.randn(8, generator=g)),
         "zeros": torch.zeros(16, 8),
         "random": torch.randn(16, 8, generator=g) @ torch.diag(torch.linspace(0.1, 2, 8))}[name]
    assert float(rankme(z)) == pytest.approx(reference_rankme(z.numpy()), rel=1e-4, abs=1e-4)
    if name != "zeros":  # a zero row has no direction to normalise
        assert float(embedding_std(z)) == pytest.approx(reference_std(z.numpy()), rel=1e-5)
    assert float(embedding_std(z, normalize=False)) == pytest.approx(reference_std(z.numpy(), normalize=False),
                                                                     rel=1e-5, abs=1e-7)


def test_rankme_known_values():
    # 8 orthogonal directions of equal length: every singular value equal, effective rank 8
    assert float(rankme(torch.eye(16, 8))) == pytest.approx(8.0, rel=1e-4)
    # every row on one line: one non-zero singular value
    assert float(rankme(torch.outer(torch.arange(1.0, 17), torch.ones(8)))) == pytest.approx(1.0, abs=1e-4)
    assert float(rankme(torch.zeros(16, 8))) == 1.0
    # identical rows (a collapsed batch) have no spread at all
    assert float(embedding_std(torch.ones(16, 8))) == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(float(embedding_std(torch.ones(1, 8))))


def test_similarity_gap_matches_loops():
    g = torch.Generator().manual_seed(1)
    a, p, q = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)

    def cos(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    positive = sum(cos(a[i], p[i]) for i in range(5)) / 5
    in_batch = sum(cos(a[i], p[j]) for i in range(5) for j in range(5) if i != j) / 20
    queued = sum(cos(a[i], q[j]) for i in range(5) for j in range(7)) / 35
    assert float(similarity_gap(a, p)) == pytest.approx(positive - in_batch, abs=1e-6)
    assert float(similarity_gap(a, p, q)) == pytest.approx(positive - queued, abs=1e-6)
    same = torch.ones(5, 4)
    assert float(similarity_gap(same, same)) == pytest.approx(0.0, abs=1e-6)  # collapse: no gap
    assert float(similarity_gap(torch.eye(4), torch.eye(4))) == pytest.approx(1.0, abs=1e-6)


def test_slot_usage():
    m = 10
    one_slot = torch.zeros(6, m)
    one_slot[:, 3] = 1
    used, entropy = slot_usage(one_slot)
    assert float(used) == pytest.approx(1 / m) and float(entropy) == pytest.approx(0.0, abs=1e-6)
    used, entropy = slot_usage(torch.full((6, m), 1 / m))
    assert float(used) == 1.0 and float(entropy) == pytest.approx(math.log(m), rel=1e-6)
    # two reads on slot 0 and 1 half each: 2 slots used of 10; entropy log 2
    half = torch.zeros(2, m)
    half[0, 0] = half[1, 1] = 1
    used, entropy = slot_usage(half)
    assert float(used) == pytest.approx(0.2) and float(entropy) == pytest.approx(math.log(2), rel=1e-6)
    # a slot at 5% of its uniform share is under the default floor of 10%
    weights = torch.full((1, m), 1.0)
    weights[0, 0] = 0.05
    used, _ = slot_usage(weights / weights.sum())
    assert float(used) == pytest.approx(0.9)


def test_cluster_sizes():
    stats = cluster_sizes(torch.tensor([0, 0, 0, 1, -1, 2, 2, 2, 2, 1]), 4)
    assert float(stats["min"]) == 0.0 and float(stats["max"]) == pytest.approx(4 / 9)
    shares = [3 / 9, 2 / 9, 4 / 9]
    assert float(stats["entropy"]) == pytest.approx(-sum(s * math.log(s) for s in shares) / math.log(4), rel=1e-6)
    equal = cluster_sizes(torch.arange(12) % 4, 4)
    assert float(equal["entropy"]) == pytest.approx(1.0) and float(equal["min"]) == float(equal["max"]) == 0.25
    assert float(cluster_sizes(torch.zeros(9, dtype=torch.long), 4)["entropy"]) == pytest.approx(0.0, abs=1e-9)


def test_collapse_watch_warns_once_per_rule(caplog):
    watch = CollapseWatch((CollapseRule("embedding_rankme", 1.5), CollapseRule("grad", 10.0, below=False)))
    with caplog.at_level(logging.WARNING, logger="vidssl.monitors"):
        assert watch.check(10, {"train/embedding_rankme": 4.0, "train/loss": 1.0}) == []
        assert watch.check(20, {"train/embedding_rankme": float("nan")}) == []
        assert [r.key for r in watch.check(30, {"train/embedding_rankme": 1.2, "grad": 11.0})] == [
            "embedding_rankme", "grad"]
        assert watch.check(40, {"train/embedding_rankme": 1.1, "grad": 12.0}) == []  # once only
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "step 30: embedding_rankme = 1.2 is below 1.5" in warnings[0]


def test_collapse_rule_held_back_by_its_unless_scalar():
    watch = CollapseWatch((CollapseRule("embedding_rank_fraction", 0.35, unless="similarity_gap", unless_at_least=0.05),))
    # low rank but positives well apart from negatives: a representation of few classes, not a collapse
    assert watch.check(10, {"train/embedding_rank_fraction": 0.28, "train/similarity_gap": 0.7}) == []
    # a task without a gap is judged on its rank alone
    assert len(watch.check(20, {"train/embedding_rank_fraction": 0.28})) == 1
