"""How many CPU threads torch may use: one rule for every tool.

torch starts one intra-op thread per core it sees, and every loader worker competes for the same cores; on a
small machine the threads then spin against each other and a run is several times slower with identical
results (docs/benchmarks.md, "CPU threads"). The rule:

    threads = max(1, cores // (1 + loader workers))

``cores`` are the processors this process may run on (``os.sched_getaffinity``). An explicit
``OMP_NUM_THREADS`` in the environment, or the tool's ``threads=N`` key, wins over the rule. The rule does not
look at the machine's load, so the same command on the same machine always gets the same count: a different
intra-op split may change results in their last bits, and a resumed run must continue with the run's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    """The chosen thread count and where it came from (for the tool's start line and metrics.json)."""

    threads: int
    source: str  # "threads=" | "OMP_NUM_THREADS" | "rule" | "rule, device cuda"
    cores: int
    workers: int

    def describe(self) -> str:
        if self.source.startswith("rule"):
            return (f"threads {self.threads} ({self.cores} cores, {self.workers} loader workers; "
                    "threads=N or OMP_NUM_THREADS overrides)")
        return f"threads {self.threads} (from {self.source})"

    def as_dict(self) -> dict[str, int | str]:
        return {"threads": self.threads, "threads_source": self.source}


def available_cores() -> int:
    """Processors this process may be scheduled on (a CPU set or taskset narrows ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(*, workers: int = 0, requested: int | None = None, device: str = "cpu",
                   environ: dict[str, str] | None = None, cores: int | None = None) -> ThreadChoice:
    """The thread count the rule gives (see the module docstring), without applying it."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    workers = max(0, int(workers or 0))
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"threads={requested}: expected a positive number of threads (or null for the rule)")
        return ThreadChoice(int(requested), "threads=", cores, workers)
    env = environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env!r}: expected a positive integer") from None
        return ThreadChoice(max(1, value), "OMP_NUM_THREADS", cores, workers)
    source = "rule" if str(device).startswith("cpu") or str(device) == "auto" else f"rule, device {device}"
    return ThreadChoice(max(1, cores // (1 + workers)), source, cores, workers)


def set_cpu_threads(*, workers: int = 0, requested: int | None = None, device: str = "cpu") -> ThreadChoice:
    """Choose the thread count (`choose_threads`) and give it to torch; returns the choice for the start line."""
    import torch

    choice = choose_threads(workers=workers, requested=requested, device=device)
    torch.set_num_threads(choice.threads)
    return choice
