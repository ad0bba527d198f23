"""Speed and memory of one label-propagation step at DAVIS scale: windowed vs dense-then-mask.

    python tools/benchmark.py suite=propagate [channels=[256,512]] [frames=2] [device=cpu]

Random unit features stand in for an encoder's (a speed benchmark): a full context (the first frame,
unrestricted as in CRW, plus ``n_context`` radius-restricted frames with random soft labels for
``num_labels`` labels), then ``frames`` query frames are labelled by each method. Every method labels
the same frames; the masks (bilinear upsampling to height×width, argmax) are compared pixel for pixel.

Peak extra memory is what one step allocates beyond its inputs (the context is held by any method):
on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident size (VmHWM, reset
through ``/proc/self/clear_refs``) with glibc told to return freed blocks to the system at once, so
the resident size follows live tensors. Memory runs come after the timed runs, which use the default
allocator.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vidssl.benchmarks.memory import peak_extra_mib
from vidssl.eval.propagate import _reference_step, propagate_step

METHODS: dict[str, Callable] = {"windowed": propagate_step, "dense_mask": _reference_step}


def _return_freed_memory_to_os() -> bool:
    """Make glibc serve every block ≥ 64 KiB by mmap (unmapped when freed); False where unsupported."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.malloc_trim(0) >= 0)
    except OSError:
        return False


def _labels(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """h×w×K soft labels → H×W label map, as propagation writes it."""
    return F.interpolate(pred.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)


def run(
    *,
    channels: Sequence[int] = (256, 512),
    height: int = 480,
    width: int = 854,
    stride: int = 8,
    n_context: int = 20,
    topk: int = 10,
    radius: int = 12,
    temperature: float = 0.07,
    tile: int = 8,
    frames: int = 2,
    num_labels: int = 4,
    methods: Sequence[str] = ("windowed", "dense_mask"),
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Time and measure one propagation step per method; returns ``{"rows": [...], "config": {...}}``.

    Each row: channels, method, frames/s, s/frame, peak extra MiB, identical (masks equal to the
    first method's on every frame), mismatched pixels, and time_ratio (this method's s/frame over
    the first method's: how many times slower than windowed).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    dev = torch.device(device)
    h, w = -(-height // stride), -(-width // stride)  # a stride-8 encoder's grid (60×107 for 480×854)
    protocol = dict(topk=topk, radius=radius, temperature=temperature)
    options = {"windowed": dict(tile=tile), "dense_mask": dict(chunk=256)}
    rows = []
    for dim in channels:
        g = torch.Generator().manual_seed(seed)
        keys = F.normalize(torch.randn(n_context, h, w, dim, generator=g), dim=-1).to(dev)
        values = torch.softmax(4 * torch.randn(n_context, h, w, num_labels, generator=g), dim=-1).to(dev)
        first_keys = F.normalize(torch.randn(1, h, w, dim, generator=g), dim=-1).to(dev)
        first_values = torch.softmax(4 * torch.randn(1, h, w, num_labels, generator=g), dim=-1).to(dev)
        queries = [F.normalize(torch.randn(h, w, dim, generator=g), dim=-1).to(dev) for _ in range(frames)]

        def step(method: str, query: torch.Tensor) -> torch.Tensor:
            return METHODS[method](query, keys, values, global_keys=first_keys, global_values=first_values,
                                   **protocol, **options[method])

        masks: dict[str, list[torch.Tensor]] = {}
        seconds: dict[str, float] = {}
        for method in methods:
            with torch.inference_mode():
                if dev.type == "cuda":
                    step(method, queries[0])  # warm-up: CUDA context, kernel selection, allocator pools
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
                preds = [step(method, q) for q in queries]
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds[method] = (time.perf_counter() - start) / frames
                masks[method] = [_labels(p, (height, width)).cpu() for p in preds]
        memory_ok = dev.type == "cuda" or _return_freed_memory_to_os()
        for method in methods:
            with torch.inference_mode():
                peak = peak_extra_mib(lambda: step(method, queries[0]), dev) if memory_ok else None
            ref = masks[methods[0]]
            mismatched = sum(int((a != b).sum()) for a, b in zip(masks[method], ref))
            rows.append({
                "channels": dim,
                "method": method,
                "frames_per_s": round(1 / seconds[method], 3),
                "s_per_frame": round(seconds[method], 3),
                "peak_extra_mib": None if peak is None else round(peak, 1),
                "identical": mismatched == 0,
                "mismatched_pixels": mismatched,
                "time_ratio": round(seconds[method] / seconds[methods[0]], 2),
            })
        del keys, values, first_keys, first_values, queries
    return {
        "rows": rows,
        "config": dict(channels=list(channels), height=height, width=width, stride=stride, grid=[h, w],
                       n_context=n_context, topk=topk, radius=radius, temperature=temperature, tile=tile,
                       frames=frames, num_labels=num_labels, device=str(dev), threads=torch.get_num_threads()),
    }
