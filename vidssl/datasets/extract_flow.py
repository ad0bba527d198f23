"""Optical flow between consecutive frames, extracted once and stored as 8-bit images (a second input stream).

`extract_flow` writes the storage layout that `vidssl.datasets.flow` defines and reads (the one the DPC/MemDPC
data preparation writes: a folder of flow images per video, a ``.flow.json`` marker written last). JPEG
quality 100, as the official preparation writes; ``ext="png"`` stores the same bytes losslessly.

Methods (`METHODS`): ``"tvl1"``, OpenCV's dual TV-L1 with its default parameters (the papers' algorithm and
the official preparation's call), and ``"dis"``, OpenCV's DIS (much faster, less accurate; a named option,
see docs/benchmarks.md). Frames are converted to grey levels before the flow is computed.

`extract_flow` runs one video per worker process, resumes (a video whose ``.flow.json`` records the same
`FlowOptions` is skipped; a folder without it, or with other options, is cleared and redone) and reports
bad videos like `vidssl.datasets.check`: they are listed with the decoder's message in
``out/extract_flow.report.json``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vidssl.datasets.decode import VideoDecodeError, VideoReader
from vidssl.datasets.entry import VideoEntry
from vidssl.datasets.flow import DEFAULT_BOUND, DONE_MARKER, FLOW_FORMAT_VERSION, flow_dir_for, flow_image, read_marker
from vidssl.datasets.pool import over_videos
from vidssl.files import atomic_write_text

METHODS: tuple[str, ...] = ("tvl1", "dis")
REPORT_NAME = "extract_flow.report.json"
READ_CHUNK = 32  # frames decoded per read: bounded memory whatever the video's length


def flow_estimator(method: str = "tvl1", *, dis_preset: str = "medium"):
    """An OpenCV dense flow object with ``calc(prev_grey, next_grey, None) -> float32 H×W×2``."""
    import cv2

    if method == "tvl1":
        return cv2.optflow.DualTVL1OpticalFlow_create()
    if method == "dis":
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if dis_preset not in presets:
            raise ValueError(f"unknown DIS preset {dis_preset!r}; choose one of {sorted(presets)}")
        return cv2.DISOpticalFlow_create(presets[dis_preset])
    raise ValueError(f"unknown flow method {method!r}; choose one of {METHODS}")


def compute_flow(prev: np.ndarray, curr: np.ndarray, estimator) -> np.ndarray:
    """Dense flow from `prev` to `curr` (uint8 H×W×3 RGB or H×W grey): float32 H×W×2 (x, y) in pixels.

    ``prev[y, x]`` moves to ``curr[y + flow[y, x, 1], x + flow[y, x, 0]]``.
    """
    import cv2

    def grey(frame: np.ndarray) -> np.ndarray:
        return frame if frame.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)

    return estimator.calc(grey(prev), grey(curr), None)


def rigid_shift(a: np.ndarray, b: np.ndarray, radius: int = 24) -> tuple[float, tuple[int, int]]:
    """The integer translation (dx, dy) that best maps boolean mask `a` onto mask `b`, and its IoU.

    The ground truth of a rigid object pasted at integer positions (the synthetic corpus's sprites): its
    masks in two frames differ by exactly its displacement (IoU 1 when it is unoccluded in both).
    """
    ys, xs = np.nonzero(a)
    best = (0.0, (0, 0))
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            y2, x2 = ys + dy, xs + dx
            ok = (y2 >= 0) & (y2 < a.shape[0]) & (x2 >= 0) & (x2 < a.shape[1])
            hit = int(b[y2[ok], x2[ok]].sum())
            iou = hit / max(int(a.sum()) + int(b.sum()) - hit, 1)
            if iou > best[0]:
                best = (iou, (dx, dy))
    return best


@dataclass(frozen=True)
class FlowResult:
    """The outcome for one video: `status` is "done", "skipped" (already complete) or "bad"."""

    path: str
    status: str
    frames: int = 0  # flow images written (or found, when skipped)
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class FlowOptions:
    """What is extracted, and how it is stored; a finished folder's marker must match all of it.

    method: one of METHODS. bound: displacement clip in pixels. ext: "jpg" (quality 100, official) or
    "png". short_side: resize frames to this short side before the flow (None: as decoded; the official
    preparation resizes Kinetics to 256). dis_preset: "ultrafast" | "fast" | "medium", for method="dis".
    """

    method: str = "tvl1"
    bound: float = DEFAULT_BOUND
    ext: str = "jpg"
    short_side: int | None = None
    dis_preset: str = "medium"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown flow method {self.method!r}; choose one of {METHODS}")
        if self.bound <= 0:
            raise ValueError(f"bound must be positive, got {self.bound}")
        if self.ext not in ("jpg", "png"):
            raise ValueError(f"flow images are jpg or png, got ext={self.ext!r}")
        object.__setattr__(self, "bound", float(self.bound))


def extract_video(
    source: str | os.PathLike,
    folder: str | os.PathLike,
    options: FlowOptions = FlowOptions(),
    *,
    backend: str = "av",
) -> int:
    """Write the flow images of one video (file or frame folder) into `folder`; returns how many.

    Any earlier content of `folder` is removed first; the marker is written last, so an interrupted call
    leaves a folder that `extract_flow` redoes. `backend` decodes video files (folders use "frames").
    Raises VideoDecodeError for an unreadable or single-frame video.
    """
    import cv2

    method, bound, ext, short_side = options.method, options.bound, options.ext, options.short_side
    cv2.setNumThreads(1)  # one video per worker process already uses every core
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    estimator = flow_estimator(method, dis_preset=options.dis_preset)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    with VideoReader(source, backend=None if Path(source).is_dir() else backend, num_threads=1) as reader:
        n = reader.num_frames
        if n < 2:
            raise VideoDecodeError(source, f"{n} frame: flow needs at least two")
        width = max(5, len(str(n)))  # names sort in frame order
        prev = None
        for start in range(0, n, READ_CHUNK):
            frames = reader.get_frames(range(start, min(start + READ_CHUNK, n))).numpy()
            for i, frame in enumerate(frames, start=start):
                grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
                if short_side is not None:
                    scale = short_side / min(grey.shape)
                    size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
                    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
                if prev is not None:
                    image = flow_image(compute_flow(prev, grey, estimator), bound)
                    if not cv2.imwrite(str(folder / f"flow_{i:0{width}d}.{ext}"), image, params):
                        raise OSError(f"cannot write flow image into {folder}")
                prev = grey
        marker = {"version": FLOW_FORMAT_VERSION, "options": asdict(options), "frames": n - 1,
                  "source_frames": n, "fps": reader.fps, "height": prev.shape[0], "width": prev.shape[1]}
    atomic_write_text(folder / DONE_MARKER, json.dumps(marker, indent=1))
    return n - 1


def _is_complete(folder: Path, options: FlowOptions) -> int | None:
    """The flow images of a finished folder extracted with `options`; None when it must be (re)done."""
    marker = read_marker(folder)
    if marker is None or marker.get("version") != FLOW_FORMAT_VERSION or marker.get("options") != asdict(options):
        return None
    return int(marker["frames"])


def _extract_one(root: str, path: str, out: str, options: FlowOptions, backend: str) -> FlowResult:
    """Worker: extract one entry's flow, or report it as bad (a bug elsewhere still raises)."""
    folder = Path(out) / flow_dir_for(path)
    done = _is_complete(folder, options)
    if done is not None:
        return FlowResult(path, "skipped", frames=done)
    started = time.perf_counter()
    try:
        frames = extract_video(Path(root) / path, folder, options, backend=backend)
    except (VideoDecodeError, OSError, IndexError) as err:
        shutil.rmtree(folder, ignore_errors=True)  # no partial folder for a bad video
        return FlowResult(path, "bad", error=f"{type(err).__name__}: {err}")
    return FlowResult(path, "done", frames=frames, seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class FlowReport:
    """Outcome of `extract_flow`: one result per video and where the bad-video report was written."""

    results: list[FlowResult]
    report: Path

    @property
    def bad(self) -> list[FlowResult]:
        return [r for r in self.results if r.status == "bad"]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)


def _counts(results: Sequence[FlowResult]) -> dict[str, int]:
    return {status: sum(r.status == status for r in results) for status in ("done", "skipped", "bad")}


def extract_flow(
    root: str | os.PathLike,
    entries: Sequence[VideoEntry],
    out: str | os.PathLike,
    options: FlowOptions = FlowOptions(),
    *,
    backend: str = "av",
    workers: int = 2,
    progress: bool = True,
) -> FlowReport:
    """Extract the flow of every video of `entries` into `out` (layout in the module docstring).

    Args:
        root: the dataset root; entry paths are relative to it.
        entries: the dataset's entries (several entries may share a video: it is extracted once).
        out: the flow root; video `a/b.mp4` goes to `out/a/b/`.
        options: what to extract and how to store it (a finished folder with other options is redone).
        backend: decoder of video files (frame folders always use "frames").
        workers: processes, one video each; progress: show a progress bar.
    Returns:
        A FlowReport; the bad videos are also written to `out/extract_flow.report.json`.
    """
    root, out = Path(root), Path(out)
    paths = list(dict.fromkeys(e.path for e in entries))
    folders: dict[str, str] = {}
    for p in paths:
        other = folders.setdefault(flow_dir_for(p), p)
        if other != p:
            raise ValueError(f"{other} and {p} would share the flow folder {out / flow_dir_for(p)}")
    out.mkdir(parents=True, exist_ok=True)
    ordered = over_videos(functools.partial(_extract_one, str(root), out=str(out), options=options, backend=backend),
                          paths, workers=workers, desc=f"extract_flow ({options.method})", unit="video",
                          progress=progress, postfix=_counts)
    report = out / REPORT_NAME
    summary = {"root": str(root), "out": str(out), **asdict(options), "backend": backend, "videos": len(ordered),
               **_counts(ordered), "files": [asdict(r) for r in ordered if r.status == "bad"]}
    atomic_write_text(report, json.dumps(summary, indent=1))
    return FlowReport(results=ordered, report=report)
