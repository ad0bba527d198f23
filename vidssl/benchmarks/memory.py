"""Memory measurements shared by the benchmarks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``, …) in MiB; Linux only."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024


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
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = status_mib("VmRSS")
    result = step()
    peak = status_mib("VmHWM")
    del result
    return peak - before
