"""Speed and memory of label propagation at DAVIS scale: windowed vs dense-then-mask, and vs the official code.

    python tools/benchmark.py suite=propagate [channels=[256,512]] [frames=2] [device=cpu]
        [official=PATH/TO/videowalk official_frames=4] [vos_frames=40 vos_height=240 vos_width=427]

Random unit features stand in for an encoder's (a speed benchmark): a full context (the first frame,
unrestricted as in CRW, plus ``n_context`` radius-restricted frames with random soft labels for
``num_labels`` labels), then ``frames`` query frames are labelled by each method. Every method labels
the same frames; the masks (bilinear upsampling to height×width, argmax) are compared pixel for pixel.

Peak extra memory is what one step allocates beyond its inputs (the context is held by any method):
on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident size (VmHWM, reset
through ``/proc/self/clear_refs``) with glibc told to return freed blocks to the system at once, so
the resident size follows live tensors. Memory runs come after the timed runs, which use the default
allocator.

With ``official=DIR`` (a checkout of ajabri/videowalk; never needed otherwise), the same run also
times the official ``test()`` loop (its affinity and propagation; the image writing it does per
frame is replaced by keeping the soft labels) against `propagate_labels` with the official
defaults, on one video of ``official_frames`` frames of smooth drifting 256-d features at the
same grid, and checks that every frame's label map is identical. Memory rows there are the peak
beyond the inputs for the whole video, vidssl at 1× and 2× the length.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vidssl.benchmarks.memory import peak_extra_mib
from vidssl.eval.propagate import _reference_step, propagate_labels, propagate_step

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
    temperature: float = 0.05,
    window: str = "circle",
    tile: int = 8,
    frames: int = 2,
    num_labels: int = 4,
    methods: Sequence[str] = ("windowed", "dense_mask"),
    device: str = "cpu",
    seed: int = 0,
    official: str | None = None,
    official_frames: int = 4,
    vos_frames: int | None = None,
    vos_height: int = 240,
    vos_width: int = 427,
) -> dict:
    """Time and measure one propagation step per method; returns ``{"rows": [...], "config": {...}}``.

    Each row: channels, method, frames/s, s/frame, peak extra MiB, identical (masks equal to the
    first method's on every frame), mismatched pixels, and time_ratio (this method's s/frame over
    the first method's: how many times slower than windowed). With ``official``, rows comparing the
    official ``test()`` with `propagate_labels` follow (see the module doc). With ``vos_frames``, rows
    of a long YouTube-VOS-style video at that length and twice it (`vidssl.benchmarks.vos.vos_rows`).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    dev = torch.device(device)
    h, w = -(-height // stride), -(-width // stride)  # a stride-8 encoder's grid (60×107 for 480×854)
    protocol = dict(topk=topk, radius=radius, temperature=temperature, window=window)
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
    if official is not None:
        rows += compare_official(official, grid=(h, w), frames=official_frames, n_context=n_context, topk=topk,
                                 radius=radius, temperature=temperature, tile=tile, seed=seed)
    if vos_frames:
        from vidssl.benchmarks.vos import vos_rows

        rows += vos_rows(frames=vos_frames, height=vos_height, width=vos_width, dim=channels[0], n_context=n_context,
                         topk=topk, radius=radius, temperature=temperature, tile=tile, seed=seed,
                         memory_ok=_return_freed_memory_to_os())
    return {
        "rows": rows,
        "config": dict(channels=list(channels), height=height, width=width, stride=stride, grid=[h, w],
                       n_context=n_context, topk=topk, radius=radius, temperature=temperature, window=window,
                       tile=tile, official=official, official_frames=official_frames,
                       frames=frames, num_labels=num_labels, device=str(dev), threads=torch.get_num_threads()),
    }


def drifting_features(frames: int, dim: int, grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Smooth random features drifting one cell per frame, plus noise: T×D×h×w (not normalised)."""
    h, w = grid
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, dim, h + frames + 4, w + frames + 4, generator=g), 5, 1)[0]
    return torch.stack([base[:, t: t + h, t: t + w] + 0.1 * torch.randn(dim, h, w, generator=g)
                        for t in range(frames)])


def compare_official(official: str, *, grid: tuple[int, int], frames: int, n_context: int, topk: int,
                     radius: float, temperature: float, tile: int, dim: int = 256, seed: int = 0) -> list[dict]:
    """Seconds per frame and labels of the official ``test()`` and of `propagate_labels` on one video."""
    import argparse
    import types

    from vidssl.benchmarks.official import import_videowalk

    videowalk = import_videowalk(official)
    h, w = grid
    feats = drifting_features(frames, dim, grid, seed)
    first = torch.zeros(h, w, dtype=torch.long)
    first[h // 6: h // 2, w // 6: w // 2], first[h // 2: 5 * h // 6, w // 2: 5 * w // 6] = 1, 2
    onehot = F.one_hot(first, 3).float()
    padded = torch.cat([feats[:1].repeat(n_context, 1, 1, 1), feats])  # as the official loader pads
    batch = (padded[None], torch.zeros(1, n_context + frames, 3, h, w),
             onehot[None, None].repeat(1, n_context + frames, 1, 1, 1), None, torch.arange(3)[None, :, None], {})
    args = argparse.Namespace(videoLen=n_context, long_mem=[0], radius=radius, temperature=temperature, topk=topk,
                              device="cpu", no_l2=False, pca_vis=False, norm_mask=False, filelist="davis",
                              save_path="", visdom=False)
    soft: list[torch.Tensor] = []
    test_utils = videowalk.test_utils
    writer = test_utils.dump_predictions
    test_utils.dump_predictions = lambda pred, *rest: soft.append(torch.from_numpy(pred).argmax(-1)) or (0, 0, 0)
    try:
        with torch.inference_mode():
            start = time.perf_counter()
            videowalk.test.test([batch], types.SimpleNamespace(encoder=lambda x: x), args)
            official_s = (time.perf_counter() - start) / frames
    finally:
        test_utils.dump_predictions = writer
    official_maps = torch.stack(soft).to(torch.uint8)

    unit = F.normalize(feats, dim=1)
    protocol = dict(n_context=n_context, topk=topk, radius=radius, temperature=temperature, tile=tile)

    def ours(length: int) -> list[torch.Tensor]:
        return list(propagate_labels(lambda t: unit[t % frames], first, length, **protocol))

    with torch.inference_mode():
        start = time.perf_counter()
        maps = torch.stack(ours(frames))
        vidssl_s = (time.perf_counter() - start) / frames
        memory_ok = _return_freed_memory_to_os()
        peaks = [peak_extra_mib(lambda: ours(n), torch.device("cpu")) if memory_ok else None
                 for n in (frames, 2 * frames)]
    mismatched = int((maps[1:] != official_maps[1:]).sum())  # frame 0: the given mask in both
    common = {"channels": dim, "frames": frames, "identical": mismatched == 0, "mismatched_cells": mismatched}
    return [
        {**common, "method": "official test()", "s_per_frame": round(official_s, 3), "peak_extra_mib": None,
         "time_ratio": round(official_s / vidssl_s, 2)},
        {**common, "method": "propagate_labels", "s_per_frame": round(vidssl_s, 3),
         "peak_extra_mib": None if peaks[0] is None else round(peaks[0], 1),
         "peak_extra_mib_2x_frames": None if peaks[1] is None else round(peaks[1], 1), "time_ratio": 1.0},
    ]
