"""From head predictions to pseudo-labels: the cluster marginal, Sinkhorn-Knopp per head, the modality
alignment, and the relabelling schedule. Pure functions on tensors; every reduction over clips is
summed over DDP ranks, so each rank passes only its own clips."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from vidssl import distributed
from vidssl.losses import sinkhorn_knopp, sinkhorn_to_tolerance


def gaussian_marginal(num_clusters: int, std: float, generator: torch.Generator) -> Tensor:
    """Relative cluster sizes drawn from N(1, std), clamped at 0.05 and normalised: K values summing to 1."""
    sizes = (1 + std * torch.randn(num_clusters, generator=generator, dtype=torch.float64)).clamp(min=0.05)
    return sizes / sizes.sum()


def match_to_mass(marginal: Tensor, scores: Tensor) -> Tensor:
    """The sizes of ``marginal`` given to the clusters in the order of their current mass (the largest
    share to the cluster the scores already fill most), as the SeLaVi paper describes.

    Inputs: marginal K, scores N×K log-probabilities (this rank's clips). Outputs: K.
    """
    mass = distributed.all_reduce_sum(F.softmax(scores.double(), dim=1).sum(0))
    matched = torch.empty_like(marginal)
    matched[mass.argsort()] = marginal.sort().values.to(matched.device)
    return matched


def assign(
    scores: Tensor, marginal: Tensor | None, *, epsilon: float, iterations: int | None = None,
    tolerance: float | None = None, max_iterations: int = 2000,
) -> tuple[Tensor, int]:
    """Sinkhorn-Knopp codes of one head under a cluster marginal.

    Inputs: scores N×K (this rank's clips); marginal K relative cluster sizes, None: equipartition;
        either ``iterations`` (a fixed count, SwAV-style) or ``tolerance`` (to convergence, at most
        ``max_iterations``: SeLaVi's relabelling).
    Outputs: (codes N×K, rows summing to 1 and columns to N·marginal over all ranks; iterations run).
    """
    if (iterations is None) == (tolerance is None):
        raise ValueError("assign: give either iterations (a fixed count) or tolerance (to convergence)")
    marginals = None if marginal is None else (None, marginal)
    if tolerance is None:
        return sinkhorn_knopp(scores, epsilon, iterations, marginals=marginals), iterations
    return sinkhorn_to_tolerance(scores, epsilon, tolerance=tolerance, max_iterations=max_iterations,
                                 marginals=marginals)


@torch.no_grad()
def alignment(video_probs: Tensor, audio_probs: Tensor) -> Tensor:
    """The permutation of the audio head's clusters that best matches the video head's.

    Pairing video cluster i with audio cluster j costs Σ_n |p_v[n,i] − p_a[n,j]|; a permutation costs
    the sum of its pairs, so the Hungarian algorithm finds the best one exactly (SeLaVi searches the
    same cost by random pairwise swaps). The cost is summed over ranks, so every rank gets the same order.

    Inputs: video_probs, audio_probs N×K (this rank's clips). Outputs: order K (long): audio cluster
    order[i] becomes cluster i.
    """
    cost = distributed.all_reduce_sum(torch.cdist(video_probs.T.double(), audio_probs.T.double(), p=1))
    _, order = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(order, dtype=torch.long)


def relabel_steps(max_steps: int, num_relabels: int, power: float = 1.5) -> list[float]:
    """When the scheduled relabellings fall: max_steps·(i/num_relabels)^power for i = 0 … num_relabels−1,
    the first at step 0 and denser late in training (power > 1), as SeLaVi's schedule with
    ``nopts = num_relabels + 1`` (its last point is the end of training, never reached).

    Outputs: num_relabels non-decreasing step positions (floats); a relabelling runs before the first
    step at or after each, at most one per step.
    """
    if num_relabels < 1:
        raise ValueError(f"relabel_steps: num_relabels must be >= 1, got {num_relabels}")
    return [max_steps * (i / num_relabels) ** power for i in range(num_relabels)]


def normalised_entropy(scores: Tensor) -> Tensor:
    """Mean entropy of softmax(scores) over rows, divided by log K (1 = uniform). Inputs: N×K."""
    probs = scores.softmax(1)
    return -(probs * probs.clamp_min(1e-12).log()).sum(1).mean() / math.log(scores.shape[1])


def hard_labels(codes: Sequence[Tensor]) -> Tensor:
    """H×N argmax labels of per-head codes [N×K_h]."""
    return torch.stack([q.argmax(1) for q in codes])
