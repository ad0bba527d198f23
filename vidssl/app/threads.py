"""How many CPU threads torch may use, and how they wait: one rule for every tool.

    threads = the cores this process may run on (``os.sched_getaffinity``)
    idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``)

The slow-downs of several times that people see on small, shared machines do not come from the thread count
as such but from OpenMP's spin-waiting: between two parallel regions each idle intra-op thread keeps its core
busy, so loader workers and other processes wait for cores that do no work. With passive waiting, one thread
per core is as fast as torch's own default on a quiet machine and as fast as one thread beside a competing
process (docs/benchmarks.md, "CPU threads"); subtracting the loader workers from the count, as an earlier
rule did, cost 10-25 % on a quiet machine. The rule does not look at the machine's load, so the same command
on the same machine always gets the same count: a different intra-op split changes training results in
their last bits, and a resumed run must continue as it began.

An explicit ``OMP_NUM_THREADS`` or ``OMP_WAIT_POLICY`` in the environment, or the tool's ``threads=N`` key,
wins over the rule. The wait policy is read by OpenMP when torch is first imported: ``vidssl.app`` sets it
(``prefer_passive_wait``) before any tool imports torch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    """The chosen thread count and where it came from (for the tool's start line and metrics.json)."""

    threads: int
    source: str  # "threads=" | "OMP_NUM_THREADS" | "rule" | "rule, device cuda"
    cores: int
    wait_policy: str  # OMP_WAIT_POLICY as OpenMP read it at torch's import ("" when unset: OpenMP's default)

    def describe(self) -> str:
        wait = f", OMP_WAIT_POLICY={self.wait_policy}" if self.wait_policy else ""
        if self.source.startswith("rule"):
            return f"threads {self.threads} (one per core{wait}; threads=N or OMP_NUM_THREADS overrides)"
        return f"threads {self.threads} (from {self.source}{wait})"

    def as_dict(self) -> dict[str, int | str]:
        return {"threads": self.threads, "threads_source": self.source, "omp_wait_policy": self.wait_policy}


_WAIT_POLICY_AT_IMPORT: str | None = None


def prefer_passive_wait(environ: dict[str, str] | None = None) -> None:
    """Make OpenMP's idle threads sleep, unless the user chose a policy; a no-op once torch is imported."""
    global _WAIT_POLICY_AT_IMPORT
    environ = os.environ if environ is None else environ
    if "torch" not in sys.modules:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        _WAIT_POLICY_AT_IMPORT = environ["OMP_WAIT_POLICY"]


def wait_policy_in_effect() -> str:
    """The OMP_WAIT_POLICY torch's OpenMP started with, as far as this process can tell."""
    if _WAIT_POLICY_AT_IMPORT is not None:
        return _WAIT_POLICY_AT_IMPORT
    return os.environ.get("OMP_WAIT_POLICY", "")


def available_cores() -> int:
    """Processors this process may be scheduled on (a CPU set or taskset narrows ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def choose_threads(*, requested: int | None = None, device: str = "cpu",
                   environ: dict[str, str] | None = None, cores: int | None = None) -> ThreadChoice:
    """The thread count the rule gives (see the module docstring), without applying it."""
    environ = os.environ if environ is None else environ
    cores = available_cores() if cores is None else cores
    wait = wait_policy_in_effect() if environ is os.environ else environ.get("OMP_WAIT_POLICY", "")
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"threads={requested}: expected a positive number of threads (or null for the rule)")
        return ThreadChoice(int(requested), "threads=", cores, wait)
    env = environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env!r}: expected a positive integer") from None
        return ThreadChoice(max(1, value), "OMP_NUM_THREADS", cores, wait)
    source = "rule" if str(device).startswith("cpu") or str(device) == "auto" else f"rule, device {device}"
    return ThreadChoice(max(1, cores), source, cores, wait)


def set_cpu_threads(*, requested: int | None = None, device: str = "cpu") -> ThreadChoice:
    """Choose the thread count (`choose_threads`) and give it to torch; returns the choice for the start line."""
    import torch

    choice = choose_threads(requested=requested, device=device)
    torch.set_num_threads(choice.threads)
    return choice
