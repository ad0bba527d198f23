"""Collectives and losses under two real gloo processes on CPU.

One spawn runs every check (process start-up dominates the cost); each rank saves what it computed
and the test compares it with the single-process result on the concatenated inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vidssl import distributed
from vidssl.losses import MoCoQueue, sinkhorn_knopp

WORLD = 2
ROWS = (7, 5)  # deliberately uneven: a short last batch on one rank


def _inputs() -> dict[str, torch.Tensor]:
    """Everything both ranks (and the single-process reference) use, generated from one seed."""
    g = torch.Generator().manual_seed(0)
    n = sum(ROWS)
    return {
        "scores": torch.randn(n, 6, generator=g),
        "huge": 1e3 * (2 * torch.rand(n, 6, generator=g) - 1),
        "row_weights": torch.rand(n, generator=g) + 0.5,
        "col_weights": torch.rand(6, generator=g) + 0.5,
        "features": torch.randn(n, 3, generator=g),
        "keys": torch.randn(n, 4, generator=g),
    }


def _local(t: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(ROWS[:rank])
    return t[start : start + ROWS[rank]]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        inputs = _inputs()
        results: dict[str, object] = {
            "rank": distributed.rank(),
            "world_size": distributed.world_size(),
            "is_dist": distributed.is_dist(),
        }
        mine = {name: _local(t, rank) for name, t in inputs.items() if name != "col_weights"}

        results["q"] = sinkhorn_knopp(mine["scores"], 0.05, 3)
        results["q_huge"] = sinkhorn_knopp(mine["huge"], 0.05, 3)
        results["q_marginals"] = sinkhorn_knopp(
            mine["scores"], 0.1, 5, marginals=(mine["row_weights"], inputs["col_weights"])
        )

        # all_gather_cat: every rank sees all rows in rank order; gradient reaches only its own rows.
        x = mine["features"].clone().requires_grad_(True)
        gathered = distributed.all_gather_cat(x)
        weights = torch.arange(1.0, gathered.numel() + 1).reshape(gathered.shape)
        (gathered * weights).sum().backward()
        results["gathered"] = gathered.detach()
        results["grad"] = x.grad

        results["sum"] = distributed.all_reduce_sum(torch.tensor([float(rank + 1)]))
        results["max"] = distributed.all_reduce_max(torch.tensor([float(rank + 1)]))

        torch.manual_seed(0)  # identical initial queues on both ranks, as a seeded run has
        queue = MoCoQueue(dim=4, size=8)
        queue.enqueue(mine["keys"])
        results["queue"] = queue.queue.clone()
        results["ptr"] = int(queue.ptr)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    inputs = _inputs()
    assert not distributed.is_dist() and distributed.world_size() == 1 and distributed.rank() == 0

    expected_q = sinkhorn_knopp(inputs["scores"], 0.05, 3)
    expected_huge = sinkhorn_knopp(inputs["huge"], 0.05, 3)
    expected_marginals = sinkhorn_knopp(
        inputs["scores"], 0.1, 5, marginals=(inputs["row_weights"], inputs["col_weights"])
    )
    n = sum(ROWS)
    weights = torch.arange(1.0, n * 3 + 1).reshape(n, 3)
    torch.manual_seed(0)
    queue = MoCoQueue(dim=4, size=8)
    queue.enqueue(inputs["keys"])  # one process enqueueing every rank's keys

    for rank, got in enumerate(ranks):
        assert (got["rank"], got["world_size"], got["is_dist"]) == (rank, WORLD, True)
        # Sinkhorn: each rank holds its rows of the single-process answer (only sums were all-reduced).
        torch.testing.assert_close(got["q"], _local(expected_q, rank), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["q_huge"], _local(expected_huge, rank), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["q_marginals"], _local(expected_marginals, rank), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["gathered"], inputs["features"])
        torch.testing.assert_close(got["grad"], _local(weights, rank))
        assert got["sum"].item() == 3.0 and got["max"].item() == 2.0
        torch.testing.assert_close(got["queue"], queue.queue)
        assert got["ptr"] == int(queue.ptr) == n % 8
