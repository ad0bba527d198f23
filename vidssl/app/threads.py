"""How many CPU threads torch may use: one rule for every tool.

torch starts one intra-op thread per core it sees, and every loader worker and every other busy process
competes for the same cores; on a small or shared machine the threads then spin against each other and a
run is several times slower with identical results (docs/benchmarks.md, "CPU threads"). The rule:

    threads = max(1, (cores - busy) // (1 + loader workers))

``cores`` are the processors this process may run on (``os.sched_getaffinity``), ``busy`` the machine's
one-minute load average rounded down (other processes already running), capped at ``cores - 1``. An explicit
``OMP_NUM_THREADS`` in the environment, or the tool's ``threads=N`` key, wins over the rule.

Pretraining leaves the load out (``busy = 0``): a resumed run then uses the same count as the run it continues
on the same machine, since a different intra-op split may change results in their last bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    """The chosen thread count and where it came from (for the tool's start line and metrics.json)."""

    threads: int
    source: str  # "threads=" | "OMP_NUM_THREADS" | "rule" | "not set (device …)"
    cores: int
    busy: int
    workers: int

    def describe(self) -> str:
        if self.source.startswith("rule"):
            busy = "load not counted" if self.source == "rule, load not counted" else f"{self.busy} busy"
            return (f"threads {self.threads} ({self.cores} cores, {busy}, {self.workers} loader "
                    f"workers; threads=N or OMP_NUM_THREADS overrides)")
        return f"threads {self.threads} (from {self.source})"

    def as_dict(self) -> dict[str, int | str]:
        return {"threads": self.threads, "threads_source": self.source}


def available_cores() -> int:
    """Processors this process may be scheduled on (a CPU set or taskset narrows ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def busy_cores(cores: int) -> int:
    """Cores other processes already keep busy: the one-minute load average, rounded down, at most cores - 1."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0
    return max(0, min(cores - 1, int(load)))


def choose_threads(*, workers: int = 0, requested: int | None = None, device: str = "cpu",
                   environ: dict[str, str] | None = None, cores: int | None = None,
                   busy: int | None = None) -> ThreadChoice:
    """The thread count the rule gives (see the module docstring), without applying it."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    busy = busy_cores(cores) if busy is None else busy
    workers = max(0, int(workers or 0))
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"threads={requested}: expected a positive number of threads (or null for the rule)")
        return ThreadChoice(int(requested), "threads=", cores, busy, workers)
    env = environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env!r}: expected a positive integer") from None
        return ThreadChoice(max(1, value), "OMP_NUM_THREADS", cores, busy, workers)
    if not str(device).startswith("cpu") and str(device) != "auto":
        return ThreadChoice(max(1, cores // (1 + workers)), f"rule, device {device}", cores, 0, workers)
    return ThreadChoice(max(1, (cores - busy) // (1 + workers)), "rule", cores, busy, workers)


def set_cpu_threads(*, workers: int = 0, requested: int | None = None, device: str = "cpu",
                    use_load: bool = True) -> ThreadChoice:
    """Choose the thread count (`choose_threads`; ``use_load=False``: as on an idle machine) and give it to
    torch; returns the choice for the start line."""
    import torch

    choice = choose_threads(workers=workers, requested=requested, device=device, busy=None if use_load else 0)
    if not use_load and choice.source == "rule":
        choice = ThreadChoice(choice.threads, "rule, load not counted", choice.cores, 0, choice.workers)
    torch.set_num_threads(choice.threads)
    return choice
