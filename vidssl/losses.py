"""Losses shared by the methods: pure functions (shapes in the docstrings) plus the small MoCo queue module.

Conventions: N samples, D embedding channels, K clusters/prototypes, M negatives. Every loss returns a
scalar averaged over its anchors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vidssl.distributed import all_gather_cat, all_reduce_max, all_reduce_sum

__all__ = [
    "info_nce",
    "dense_info_nce",
    "nt_xent",
    "MoCoQueue",
    "ring_write",
    "momentum_update",
    "sinkhorn_knopp",
]


def _check_2d(name: str, t: Tensor) -> None:
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N×D), got shape {tuple(t.shape)}")


def info_nce(
    query: Tensor,
    positive_key: Tensor,
    negative_keys: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
) -> Tensor:
    """InfoNCE: classify each query's positive key among negatives.

    Inputs:
        query:         N×D.
        positive_key:  N×D, row n is the positive of query n.
        negative_keys: M×D shared by every query (e.g. a MoCo queue), or None: then the other rows of
                       `positive_key` are the negatives (N−1 per query, the in-batch form).
        temperature:   logits are similarities divided by it.
        normalize:     L2-normalise query and keys first (cosine similarity).
    Outputs: scalar, the mean cross-entropy over the N queries.
    """
    _check_2d("query", query)
    _check_2d("positive_key", positive_key)
    if query.shape != positive_key.shape:
        raise ValueError(f"query {tuple(query.shape)} and positive_key {tuple(positive_key.shape)} differ")
    if negative_keys is not None:
        _check_2d("negative_keys", negative_keys)
        if negative_keys.shape[1] != query.shape[1]:
            raise ValueError(f"negative_keys has D={negative_keys.shape[1]}, query has D={query.shape[1]}")
    if normalize:
        query = F.normalize(query, dim=1)
        positive_key = F.normalize(positive_key, dim=1)
        if negative_keys is not None:
            negative_keys = F.normalize(negative_keys, dim=1)

    if negative_keys is None:
        logits = query @ positive_key.T  # (N, N), the positive on the diagonal
        labels = torch.arange(query.shape[0], device=query.device)
    else:
        positive = (query * positive_key).sum(dim=1, keepdim=True)  # (N, 1)
        negative = query @ negative_keys.T  # (N, M)
        logits = torch.cat([positive, negative], dim=1)  # (N, 1+M), the positive in column 0
        labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits / temperature, labels)


def dense_info_nce(
    pred: Tensor, target: Tensor, temperature: float = 1.0, normalize: bool = False
) -> tuple[Tensor, Tensor]:
    """DPC's dense InfoNCE: pred[b, n] must pick target[b, n] among every (b', n') of the batch.

    Inputs:
        pred:   B×N×D predicted features (DPC: N = pred_step × H'×W', position-major order is the
                caller's choice as long as `target` uses the same one).
        target: B×N×D true features.
        temperature, normalize: as in `info_nce` (DPC itself uses plain dot products: 1.0, False).
    Outputs: (loss, accuracy) — scalar cross-entropy over the B·N anchors, and the fraction whose
        highest logit is their positive (no gradient).
    One (B·N)×(B·N) matrix product: every other time step, position and clip is a negative.
    """
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be B×N×D, got {tuple(pred.shape)} and {tuple(target.shape)}")
    p = rearrange(pred, "b n d -> (b n) d")
    t = rearrange(target, "b n d -> (b n) d")
    if normalize:
        p = F.normalize(p, dim=1)
        t = F.normalize(t, dim=1)
    logits = p @ t.T / temperature  # (B·N, B·N), positives on the diagonal
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return loss, accuracy


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR's NT-Xent: each of the 2N views must find its partner among the other 2N−1.

    Inputs: z1, z2: N×D embeddings of two views (row n of each is the same clip); they are
        L2-normalised here.
    Outputs: scalar, the mean cross-entropy over all 2N anchors (2N−2 negatives each).
    """
    _check_2d("z1", z1)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} differ")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2N, D)
    sim = z @ z.T / temperature  # (2N, 2N)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))  # a view is never its own negative
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner)


@torch.no_grad()
def ring_write(bank: Tensor, pointer: int, rows: Tensor) -> int:
    """Write rows (N×D) into the ring buffer bank (S×D) from slot ``pointer``; returns the next pointer.

    The result is the same as writing the rows one slot at a time: when N > S only the newest S rows survive,
    each in the slot it would have reached. MoCo's key queue and SeLaVi's feature queue both write this way.
    """
    size, n = bank.shape[0], rows.shape[0]
    start = pointer
    if n > size:
        start, rows = (pointer + n - size) % size, rows[n - size:]
    slots = (start + torch.arange(rows.shape[0], device=bank.device)) % size
    bank[slots] = rows.to(bank.device, bank.dtype)
    return (pointer + n) % size


class MoCoQueue(nn.Module):
    """A ring buffer of past keys used as negatives (MoCo).

    Buffers: `queue` (size×dim, starts as random unit vectors, as in MoCo) and `ptr` (next slot).
    Under DDP every rank enqueues the keys of all ranks, so the queues stay identical.
    """

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"MoCoQueue needs dim >= 1 and size >= 1, got dim={dim}, size={size}")
        self.dim = dim
        self.size = size
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write keys (B×dim, from this rank; gathered from all ranks here) over the oldest entries."""
        _check_2d("keys", keys)
        if keys.shape[1] != self.dim:
            raise ValueError(f"keys have dim {keys.shape[1]}, the queue holds dim {self.dim}")
        keys = all_gather_cat(keys.detach()).to(self.queue.dtype)
        self.ptr.fill_(ring_write(self.queue, int(self.ptr), keys))

    def negatives(self) -> Tensor:
        """The queued keys, size×dim (a copy, so a later enqueue cannot alter a graph that uses them)."""
        return self.queue.clone()


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """target ← m·target + (1−m)·online, parameter by parameter (buffers are left to the target's own
    forward passes, as in MoCo and BYOL). The two modules must have the same parameter names."""
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    online_params = dict(online.named_parameters())
    target_params = dict(target.named_parameters())
    if online_params.keys() != target_params.keys():
        missing = sorted(online_params.keys() ^ target_params.keys())
        raise ValueError(f"online and target modules differ in parameters: {missing[:5]}")
    for name, p_target in target_params.items():
        p_target.mul_(m).add_(online_params[name].detach(), alpha=1.0 - m)


def _marginal_targets(
    marginals: tuple[Tensor | None, Tensor | None] | None,
    n_local: int,
    k: int,
    n_total: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Row and column sums the assignment must reach (see `sinkhorn_knopp`)."""
    row_weights, col_weights = marginals if marginals is not None else (None, None)
    if row_weights is None:
        row_target = torch.ones(n_local, dtype=dtype, device=device)
    else:
        row_weights = _check_marginal("marginals[0] (rows)", row_weights, n_local).to(device, dtype)
        total = all_reduce_sum(row_weights.sum().reshape(1))
        row_target = row_weights * (n_total / total)
    if col_weights is None:
        col_target = torch.full((k,), n_total / k, dtype=dtype, device=device)
    else:
        col_weights = _check_marginal("marginals[1] (columns)", col_weights, k).to(device, dtype)
        col_target = col_weights * (n_total / col_weights.sum())
    return row_target, col_target


def _check_marginal(name: str, w: Tensor, length: int) -> Tensor:
    if w.ndim != 1 or w.shape[0] != length:
        raise ValueError(f"sinkhorn_knopp: {name} must have shape ({length},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
        raise ValueError(f"sinkhorn_knopp: {name} must be finite and strictly positive")
    return w


def _shifted_exp(scores: Tensor, inv_eps: float, col_potential: Tensor | None, out: Tensor) -> Tensor:
    """out ← exp(max(scores/ε + g − m, −floor)) with m the row maximum: every row holds a 1, nothing
    overflows, and nothing reaches the subnormal range (which is both imprecise and, for exp on CPU, over
    ten times slower). Entries clamped at e^−floor are negligible next to a row's 1; `sinkhorn_knopp`
    keeps its scalings small enough that they stay negligible in column sums too.

    Inputs: scores N×K, col_potential g (K,) or None (zeros), out N×K buffer.
    Outputs: m (N,), the per-row shift.
    """
    if col_potential is None:
        row_max = scores.amax(dim=1).to(out.dtype) * inv_eps
        torch.add(-row_max[:, None], scores, alpha=inv_eps, out=out)  # one pass: scores/ε − m
    else:
        torch.add(col_potential[None, :], scores, alpha=inv_eps, out=out)
        row_max = out.amax(dim=1)
        out.sub_(row_max[:, None])
    floor = -math.log(torch.finfo(out.dtype).tiny) - 8.0  # 79 in fp32, 700 in fp64
    out.clamp_(min=-floor).exp_()
    return row_max


def _log_column_potential(
    scores: Tensor, inv_eps: float, row_log_weight: Tensor, log_col_target: Tensor, buf: Tensor
) -> Tensor:
    """Exact column update in the log domain, for when the fp32 kernel has lost a column.

    Returns g (K,) such that Σ_i exp(scores_ik/ε + row_log_weight_i + g_k) = col_target_k, with the
    sum over every rank's rows. `buf` (N×K) is scratch space and is overwritten.
    """
    torch.mul(scores, inv_eps, out=buf)
    buf.add_(row_log_weight[:, None])
    col_max = all_reduce_max(buf.amax(dim=0))
    buf.sub_(col_max).exp_()
    col_sum = all_reduce_sum(buf.sum(dim=0))  # each column holds a 1 on some rank, so sum >= 1
    return log_col_target - (col_max + col_sum.log())


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    marginals: tuple[Tensor | None, Tensor | None] | None = None,
) -> Tensor:
    """Equipartitioned soft assignments of samples to clusters (SwAV / SeLa optimal transport).

    Inputs:
        scores:     N×K similarities of each sample to each cluster (any finite values; under DDP, this
                    rank's N rows).
        epsilon:    entropic regularisation; the kernel is exp(scores/ε). Smaller = harder assignments.
        iterations: alternating (column, then row) normalisations, as in SwAV.
        marginals:  (row_weights N | None, col_weights K | None): positive relative weights; None means
                    uniform. Row weights are normalised over all ranks' rows, column weights over K.
    Outputs: Q, N×K in fp32 (fp64 for fp64 scores), without gradient. Convention: with row marginal a and
        column marginal r (each summing to 1 over the global N and over K), row n sums to N·a_n — exactly
        1 for uniform rows, because the last step normalises rows: one soft assignment per sample — and
        column k sums to N·r_k (N/K uniform) up to the convergence left after `iterations`.

    Numerics. The SwAV form exponentiates scores/ε directly and overflows once it exceeds ~88 in fp32.
    Here the kernel is exp(scores/ε + g − m) with m the row maximum (every row holds a 1; entries below
    e^−79 are raised to it, which keeps exp and the products out of the slow, imprecise subnormal range),
    and the iterations update only the scaling vectors u (rows) and v (columns) with two matrix-vector
    products, instead of rewriting the N×K matrix twice per iteration; the result is diag(u)·kernel·diag(v),
    and the only N×K allocation is that result. Row sums are always ≥ min(v) > 0. While v stays within
    e^±R (R = 21.8 in fp32, 177 in fp64) nothing can overflow and the floored entries stay negligible
    (below ~4e-16·K of any column sum). When a column update leaves that range (a cluster whose kernel
    entries underflowed), that one update is done exactly in the log domain and absorbed into g,
    re-forming the kernel — never for cosine-similarity scores at ε = 0.05, once or a few times per call
    for scores/ε in the thousands. Under DDP (every rank needs at least one row) only column sums (and,
    in the log-domain step, column maxima) are all-reduced, and every branch decision uses reduced values,
    so each rank returns its rows of the single-process result on the concatenated scores.
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn_knopp: iterations must be >= 1, got {iterations}")
    return _run_sinkhorn(scores, epsilon, iterations, marginals, tolerance=None)[0]


def sinkhorn_to_tolerance(
    scores: Tensor,
    epsilon: float = 0.05,
    *,
    tolerance: float = 0.1,
    max_iterations: int = 2000,
    check_every: int = 10,
    marginals: tuple[Tensor | None, Tensor | None] | None = None,
) -> tuple[Tensor, int]:
    """`sinkhorn_knopp` iterated until the row scaling settles (SeLa/SeLaVi's stopping rule).

    Inputs: scores, epsilon, marginals as for `sinkhorn_knopp`; tolerance: stop once
        Σ_n |β_n / β'_n − 1| ≤ tolerance, with β and β' the row scalings before and after an iteration,
        summed over every sample (all ranks' rows); the error is measured after iteration 1 and then every
        ``check_every`` iterations; max_iterations: the cap.
    Outputs: (Q N×K as `sinkhorn_knopp` returns it, the number of iterations run).

    SeLaVi's `optimize_L_sk_gpu` stops the same way (tolerance 0.1 on the summed error, checked at
    iterations 1, 11, 21, …, at most 2000), so the iteration counts are 1, 11, 21, … or the cap. The sum
    over N makes the criterion stricter for larger datasets.
    """
    if not tolerance > 0:
        raise ValueError(f"sinkhorn_to_tolerance: tolerance must be > 0, got {tolerance}")
    if max_iterations < 1 or check_every < 1:
        raise ValueError(f"sinkhorn_to_tolerance: max_iterations and check_every must be >= 1, got "
                         f"{max_iterations} and {check_every}")
    return _run_sinkhorn(scores, epsilon, max_iterations, marginals, tolerance=tolerance, check_every=check_every)


def _run_sinkhorn(
    scores: Tensor,
    epsilon: float,
    iterations: int,
    marginals: tuple[Tensor | None, Tensor | None] | None,
    *,
    tolerance: float | None,
    check_every: int = 10,
) -> tuple[Tensor, int]:
    """Validation and setup shared by `sinkhorn_knopp` and `sinkhorn_to_tolerance`."""
    _check_2d("scores", scores)
    if not epsilon > 0:
        raise ValueError(f"sinkhorn_knopp: epsilon must be > 0, got {epsilon}")
    n_local, k = scores.shape
    if n_local == 0 or k == 0:
        raise ValueError(f"sinkhorn_knopp: scores must be non-empty, got shape {tuple(scores.shape)}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    scores = scores.to(dtype)  # no copy for fp32/fp64; half precision is widened once
    device = scores.device
    n_total = int(all_reduce_sum(torch.tensor([n_local], dtype=torch.long, device=device)).item())
    row_target, col_target = _marginal_targets(marginals, n_local, k, n_total, dtype, device)
    inv_eps = 1.0 / epsilon
    # Scalings stay within e^±R; with the kernel floor of `_shifted_exp` (e^−79 in fp32) the floored
    # entries then weigh at most K·e^(2R−79) ≈ 4e-16·K relative to any column sum.
    log_range = -math.log(torch.finfo(dtype).tiny) / 4.0  # 21.8 in fp32, 177 in fp64

    # Autocast would run the matrix-vector products in half precision; the scalings need full precision.
    with torch.autocast(device_type=device.type, enabled=False):
        return _sinkhorn(scores, inv_eps, iterations, row_target, col_target, log_range, tolerance, check_every)


def _sinkhorn(
    scores: Tensor, inv_eps: float, iterations: int, row_target: Tensor, col_target: Tensor, log_range: float,
    tolerance: float | None, check_every: int,
) -> tuple[Tensor, int]:
    """The iterations of `sinkhorn_knopp` on validated inputs (see its docstring); returns (Q, iterations
    run). With a ``tolerance`` it stops early as `sinkhorn_to_tolerance` describes."""
    n_local, k = scores.shape
    kernel = torch.empty((n_local, k), dtype=row_target.dtype, device=scores.device)
    row_max = _shifted_exp(scores, inv_eps, None, out=kernel)
    # NaN and +inf show up in the row maxima, -inf in the minimum: cheaper than isfinite on N×K. The
    # flag is reduced so that every rank raises, rather than one raising while the others wait.
    bad = ~torch.isfinite(row_max).all() | ~torch.isfinite(scores.amin())
    if bool(all_reduce_max(bad.to(row_max.dtype).reshape(1))):
        raise ValueError("sinkhorn_knopp: scores contain NaN or inf (on this or another rank)")
    # SwAV starts from exp(scores/ε) with every row weighted alike: on the row-shifted kernel that is
    # u_i = exp(m_i − max m). Rows far below the global maximum may underflow here; the range check on v
    # below catches any column for which that matters.
    global_max = all_reduce_max(row_max.max().reshape(1))
    log_u = row_max - global_max
    u = log_u.exp()
    done = 0
    while done < iterations:
        # The row scaling of exp(scores/ε) itself is u·e^−m (the kernel is shifted by m per row).
        log_row_scaling = log_u - row_max
        col_sum = all_reduce_sum(torch.mv(kernel.T, u))
        v = col_target / col_sum
        if not bool((v.log().abs() <= log_range).all()):
            potential = _log_column_potential(scores, inv_eps, log_row_scaling, col_target.log(), buf=kernel)
            row_max = _shifted_exp(scores, inv_eps, potential, out=kernel)
            v = torch.ones_like(col_target)
        row_sum = torch.mv(kernel, v)  # >= min(v) > 0: each kernel row holds a 1
        u = row_target / row_sum
        log_u = u.log()
        done += 1
        if tolerance is not None and (done - 1) % check_every == 0:
            change = (log_row_scaling - (log_u - row_max)).exp().sub_(1).abs_().sum()
            if float(all_reduce_sum(change.reshape(1))) <= tolerance:
                break
    return kernel.mul_(v).mul_(u[:, None]), done
