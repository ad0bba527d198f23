"""Memory measurements shared by the benchmarks."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import torch


def status_mib(*fields: str) -> tuple[float, ...]:
    """Memory fields of /proc/self/status (``VmRSS``, ``VmHWM``, …) in MiB, read at once; Linux only."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024 for field in fields)


def reset_peak() -> None:
    """Reset VmHWM (the peak resident size) to the current resident size; OSError where /proc refuses."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_extra_mib(step: Callable[[], torch.Tensor], device: torch.device) -> float | None:
    """Memory one call of ``step`` needs beyond what was allocated before it, in MiB.

    CUDA: the allocator's peak. CPU: the peak resident size (VmHWM, reset first through
    /proc/self/clear_refs) minus the resident size before the call; None where that cannot be reset.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = step()
        torch.cuda.synchronize(device)
        del result
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        reset_peak()
    except OSError:
        return None
    (before,) = status_mib("VmRSS")
    result = step()
    (peak,) = status_mib("VmHWM")
    del result
    return peak - before


class PeakRSS:
    """Largest growth of this process's resident memory (bytes) while the block runs; Linux only."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0

    @staticmethod
    def rss() -> int:
        return int(status_mib("VmRSS")[0] * 2**20)

    def _poll(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self.rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.base)
