"""Health monitors of a training run: signs of representation collapse, muted memory, degenerate clusters.

Pure functions on detached tensors; the tasks call them under ``no_grad`` in ``forward`` and return the
values as named logs, so they reach ``RUN/scalars.{csv,txt}`` and TensorBoard with the loss.
`CollapseWatch` reads those logs at every logging step and warns once per monitor when one crosses a
threshold that signals collapse. docs/internals.md ("Health monitors") gives the values measured on a
healthy and on a collapsing run, from which the thresholds come.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COLLAPSE_RULES", "CollapseRule", "CollapseWatch", "cluster_sizes", "embedding_monitors",
           "embedding_std", "rankme", "similarity_gap", "slot_usage"]

log = logging.getLogger(__name__)


def _matrix(z: Tensor, name: str) -> Tensor:
    if z.ndim != 2:
        raise ValueError(f"{name} needs an N×D matrix, got shape {tuple(z.shape)}")
    return z.detach().float()


def embedding_std(z: Tensor, *, normalize: bool = True) -> Tensor:
    """Per-dimension standard deviation over the batch, averaged over the dimensions.

    Inputs: z N×D embeddings (N ≥ 2); ``normalize``: L2-normalise each row first (SimSiam's collapse
        measure: then a healthy, isotropic batch gives about 1/√D and a collapsed one 0).
    Outputs: scalar ≥ 0 (the unbiased std, as ``Tensor.std``); NaN for a single row (no spread to measure).
    """
    z = _matrix(z, "embedding_std")
    if z.shape[0] < 2:
        return torch.full((), float("nan"), device=z.device)
    if normalize:
        z = F.normalize(z, dim=1)
    return z.std(dim=0).mean()


def rankme(z: Tensor, *, eps: float = 1e-7) -> Tensor:
    """RankMe (Garrido et al., ICML 2023): the effective rank of the batch of embeddings.

    exp of the entropy of the singular values σ_k of z normalised to sum 1 (p_k = σ_k / Σσ + eps, as the
    paper). Inputs: z N×D. Outputs: scalar in [1, min(N, D)] (about min(N, D) for a well spread batch,
    1 for a batch on one line); an all-zero matrix gives 1, as collapsed as it gets.
    """
    z = _matrix(z, "rankme")
    sigma = torch.linalg.svdvals(z)
    total = sigma.sum()
    if total <= 0:
        return torch.ones((), device=z.device)
    p = sigma / total + eps
    return torch.exp(-(p * p.log()).sum())


def embedding_monitors(z: Tensor, prefix: str = "embedding") -> dict[str, Tensor]:
    """``{prefix}_std`` (of the L2-normalised rows), ``{prefix}_rankme`` and ``{prefix}_rank_fraction``
    (RankMe over its largest possible value min(N, D), comparable across batch sizes and widths) of z N×D.
    """
    with torch.no_grad():
        effective = rankme(z)
        return {f"{prefix}_std": embedding_std(z), f"{prefix}_rankme": effective,
                f"{prefix}_rank_fraction": effective / min(z.shape)}


def similarity_gap(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
    """Mean cosine similarity of the positive pairs minus that of the negative pairs.

    Inputs: anchors, positives N×D (row n of each is a positive pair); negatives None (every other row
        of ``positives`` is a negative of an anchor: in-batch negatives) or Q×D (a queue: every row is a
        negative of every anchor).
    Outputs: scalar in [-2, 2]; 0 when positives are no closer than negatives (a collapsed embedding
        makes every similarity 1, and the gap 0).
    """
    a = F.normalize(_matrix(anchors, "similarity_gap"), dim=1)
    p = F.normalize(_matrix(positives, "similarity_gap"), dim=1)
    if a.shape != p.shape:
        raise ValueError(f"similarity_gap: anchors {tuple(a.shape)} and positives {tuple(p.shape)} differ")
    positive = (a * p).sum(1).mean()
    if negatives is None:
        n = a.shape[0]
        if n < 2:
            raise ValueError("similarity_gap with in-batch negatives needs at least 2 rows")
        # Σ_{i≠j} a_i·p_j = (Σ_i a_i)·(Σ_j p_j) − Σ_i a_i·p_i: no N×N matrix (DPC's batch has thousands of rows)
        negative = (a.sum(0) @ p.sum(0) - (a * p).sum()) / (n * (n - 1))
    else:
        negative = a.mean(0) @ F.normalize(_matrix(negatives, "similarity_gap"), dim=1).mean(0)
    return positive - negative


def slot_usage(weights: Tensor, *, floor: float = 0.1) -> tuple[Tensor, Tensor]:
    """How a memory's slots are used by soft addressing.

    Inputs: weights R×M addressing distributions (each row sums to 1: one read of M slots); ``floor``: a
        slot counts as used when its mean weight over the reads is at least ``floor / M`` (a tenth of
        its uniform share by default).
    Outputs: (fraction of slots used, in [1/M, 1]; entropy of the mean usage in nats, in [0, log M]:
        log M when every slot is read equally, 0 when one slot takes every read).
    """
    w = _matrix(weights, "slot_usage")
    usage = w.mean(0)
    usage = usage / usage.sum().clamp_min(1e-12)
    m = w.shape[1]
    used = (usage >= floor / m).float().mean()
    entropy = -(usage * usage.clamp_min(1e-12).log()).sum()
    return used, entropy


def cluster_sizes(labels: Tensor, num_clusters: int) -> dict[str, Tensor]:
    """The size distribution of a hard clustering.

    Inputs: labels N (int, in [0, num_clusters); negative entries, clips without a label, are left out).
    Outputs: {"min", "max": the smallest and largest cluster as fractions of the labelled clips,
        "entropy": entropy of the size distribution over log K (1 = equal sizes, 0 = one cluster)}.
    """
    labels = labels.detach().flatten().long()
    labels = labels[labels >= 0]
    counts = torch.bincount(labels, minlength=num_clusters).double()
    share = counts / counts.sum().clamp_min(1.0)
    entropy = -(share * share.clamp_min(1e-12).log()).sum() / math.log(num_clusters)
    return {"min": share.min().float(), "max": share.max().float(), "entropy": entropy.float()}


@dataclass(frozen=True)
class CollapseRule:
    """A logged scalar and the side of a threshold that signals collapse."""

    key: str  # the scalar's name as the task logs it (without the "train/" prefix)
    threshold: float
    below: bool = True  # collapse when the value drops below the threshold (else when it rises above it)
    meaning: str = ""
    # Not collapse after all when this other scalar is logged and at least `unless_at_least`.
    unless: str | None = None
    unless_at_least: float = 0.0


# Thresholds from the runs in docs/internals.md ("Health monitors"): healthy runs stay clear of each by a
# wide margin; the collapsing runs crossed them.
COLLAPSE_RULES: tuple[CollapseRule, ...] = (
    # A low rank alone is no collapse on a corpus of few classes (the demo's MemDPC, which learns, settles at
    # 0.26-0.31 with a similarity gap of 0.6-0.77); collapsing runs had both a low rank and no gap (< 0.04).
    CollapseRule("embedding_rank_fraction", 0.35, meaning="the batch's embeddings span few of the directions "
                 "they could, and positives are no closer than negatives", unless="similarity_gap",
                 unless_at_least=0.05),
    # MemDPC at a destructive lr read one slot of 256 (0.004; healthy 1.0); SeLa's clusters at a destructive
    # lr put 98% of the clips in one cluster (entropy 0.04; healthy 0.99).
    CollapseRule("memory_used", 0.05, meaning="almost every memory slot is muted"),
    CollapseRule("cluster_entropy", 0.2, meaning="nearly every clip falls into one cluster"),
)


class CollapseWatch:
    """Warns once per rule when a logged value crosses its collapse threshold.

    ``check(step, values)`` takes the scalars of one logging step (``{name: value}``, the names as the
    task returns them, with or without a ``train/`` prefix); values a task does not log are skipped, and a
    rule whose ``unless`` scalar is logged at or above ``unless_at_least`` does not fire.
    Returns the rules that fired at this call (each fires at most once per run).
    """

    def __init__(self, rules: tuple[CollapseRule, ...] = COLLAPSE_RULES) -> None:
        self.rules = rules
        self.fired: set[str] = set()

    def check(self, step: int, values: Mapping[str, float]) -> list[CollapseRule]:
        fired = []
        for rule in self.rules:
            value = values.get(rule.key, values.get(f"train/{rule.key}"))
            if value is None or rule.key in self.fired or not math.isfinite(value):
                continue
            other = None if rule.unless is None else values.get(rule.unless, values.get(f"train/{rule.unless}"))
            if other is not None and other >= rule.unless_at_least:
                continue
            if (value < rule.threshold) if rule.below else (value > rule.threshold):
                self.fired.add(rule.key)
                fired.append(rule)
                log.warning("possible collapse at step %d: %s = %.4g is %s %g (%s); see docs/internals.md, "
                            "Health monitors", step, rule.key, value, "below" if rule.below else "above",
                            rule.threshold, rule.meaning)
        return fired
