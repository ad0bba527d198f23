"""Rank/world helpers and collectives that degrade to no-ops without torch.distributed.

Library code calls these unconditionally: in a single process `world_size() == 1` and every collective
returns its input, so the same code runs under `python` and under `torchrun`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["is_dist", "rank", "world_size", "all_gather_cat", "all_reduce_sum", "all_reduce_max", "join_process_group",
           "leave_process_group", "adopt_submitit_environment"]


def is_dist() -> bool:
    """True when a torch.distributed process group is initialised (and has more than zero members)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without torch.distributed)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """The number of processes (1 without torch.distributed)."""
    return dist.get_world_size() if is_dist() else 1


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every rank along dim 0, in rank order.

    Inputs: t (N_r, ...) — N_r may differ between ranks; the trailing shape must agree.
    Outputs: (sum_r N_r, ...). Gradient flows only to this rank's own slice (the other ranks' rows
    are constants here; each rank back-propagates through its own rows), which is what contrastive
    losses with cross-rank negatives need.
    """
    if world_size() == 1:
        return t
    n = world_size()
    # Sizes first, so that ranks with a short last batch can take part: all_gather needs equal shapes.
    local_size = torch.tensor([t.shape[0]], device=t.device, dtype=torch.long)
    sizes = [torch.zeros_like(local_size) for _ in range(n)]
    dist.all_gather(sizes, local_size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = t.detach()
    if t.shape[0] < longest:
        pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
        padded = torch.cat([padded, pad], dim=0)
    gathered = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(gathered, padded.contiguous())
    parts = [g[:c] for g, c in zip(gathered, counts)]
    parts[rank()] = t  # the local slice keeps its autograd history
    return torch.cat(parts, dim=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks, in place, and return it (no gradient; `t` unchanged in one process)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of `t` over ranks, in place, and return it (no gradient)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def join_process_group() -> tuple[int, bool]:
    """Join torchrun's process group when launched by it (or by submitit, whose job environment gives the
    same variables); returns (local_rank, whether we joined it)."""
    adopt_submitit_environment()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or is_dist():
        return local_rank, False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return local_rank, True


def leave_process_group(*, finished: bool) -> None:
    """Leave torchrun's process group once gloo's worker threads have let go of every collective.

    A gloo worker still holding a collective's tensors when the interpreter shuts down aborts the process
    ("terminate called without an active exception"; docs/internals.md, "Distributed teardown"). After a
    finished run every rank meets at a barrier (after a failure the others may never come), then this
    process waits until its workers sleep.
    """
    if finished:
        dist.barrier()
    wait_for_idle_gloo_workers()
    dist.destroy_process_group()


def wait_for_idle_gloo_workers(timeout_s: float = 10.0) -> None:
    """Sleep (the GIL released) until every gloo worker thread of this process has been asleep for 3 polls.

    A worker that still holds a finished collective is runnable (or waits for the GIL, which the sleep
    frees); an idle one sleeps on its queue. Linux only (``/proc``); elsewhere, and after ``timeout_s``,
    it returns at once.
    """
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return
    deadline, asleep = time.monotonic() + timeout_s, 0
    while asleep < 3 and time.monotonic() < deadline:
        busy = False
        for tid in os.listdir(tasks):
            try:
                if (tasks / tid / "comm").read_text().strip() != "pt_gloo_runloop":
                    continue
                state = (tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:  # the thread ended meanwhile
                continue
            busy = busy or state != "S"
        asleep = 0 if busy else asleep + 1
        time.sleep(0.01)


def adopt_submitit_environment() -> bool:
    """Under a submitit job (``hydra/launcher=submitit_slurm``, ``slurm`` or ``submitit_local``), set torchrun's
    variables from the job's environment, so the process group is set up exactly as under torchrun.

    RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE come from ``submitit.JobEnvironment`` (SLURM_PROCID,
    SLURM_LOCALID, SLURM_NTASKS... on SLURM); MASTER_ADDR is the job's first node (127.0.0.1 on one
    node), MASTER_PORT 20000 + the job id modulo 20000 (a requeued job keeps its id, and its port), unless
    they are set already. Returns whether it set them: not under torchrun (WORLD_SIZE set) or outside submitit.
    Raises ValueError when a node has more GPUs than tasks: vidssl trains one GPU per task.
    """
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    import submitit

    job = submitit.JobEnvironment()
    per_node = job.num_tasks // job.num_nodes
    gpus = torch.cuda.device_count()
    if gpus > per_node:
        raise ValueError(f"this node has {gpus} GPUs for {per_node} task(s): vidssl trains one GPU per task; set "
                         f"hydra.launcher.tasks_per_node={gpus} (hydra/launcher=slurm does: tasks_per_node = "
                         "gpus_per_node)")
    os.environ.update(RANK=str(job.global_rank), LOCAL_RANK=str(job.local_rank), WORLD_SIZE=str(job.num_tasks),
                      LOCAL_WORLD_SIZE=str(per_node))
    os.environ.setdefault("MASTER_ADDR", job.hostnames[0] if job.num_nodes > 1 else "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + int(re.sub(r"\D", "", job.job_id) or 0) % 20000))
    return True
