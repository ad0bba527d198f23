"""Optical flow between consecutive frames, extracted once and stored as 8-bit images (a second input stream).

Layout written by `extract_flow` (the one the DPC/MemDPC data preparation writes)::

    out/<entry path without its extension>/flow_00001.jpg   flow from frame 0 to frame 1
                                           flow_00002.jpg   flow from frame 1 to frame 2, ...
                                           .flow.json       written last: the video is complete

A video of N frames gives N-1 flow images. Each is a 3-channel image whose first two channels in OpenCV's
BGR order hold the horizontal (x) and vertical (y) displacement in pixels, clipped to ±bound and mapped
linearly onto 0..255 (`encode_flow`); the third channel is the constant 128. Read back as RGB (PIL, the
"frames" backend of `vidssl.datasets.decode`) the channels are therefore (128, y, x). JPEG quality 100,
as the official preparation writes; ``ext="png"`` stores the same bytes losslessly.

Methods (`METHODS`): ``"tvl1"``, OpenCV's dual TV-L1 with its default parameters (the papers' algorithm and
the official preparation's call), and ``"dis"``, OpenCV's DIS (much faster, less accurate; a named option,
see docs/benchmarks.md). Frames are converted to grey levels before the flow is computed.

`extract_flow` runs one video per worker process, resumes (a video whose ``.flow.json`` records the same
`FlowOptions` is skipped; a folder without it, or with other options, is cleared and redone) and reports
bad videos like `vidssl.datasets.check`: they are listed with the decoder's message in
``out/extract_flow.report.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vidssl.datasets.decode import VideoDecodeError, VideoReader
from vidssl.datasets.formats import VIDEO_EXTENSIONS, VideoEntry

METHODS: tuple[str, ...] = ("tvl1", "dis")
DEFAULT_BOUND = 20.0  # pixels; the DPC/MemDPC preparation's clip
DONE_MARKER = ".flow.json"  # written last in a video's folder: its presence marks a complete extraction
REPORT_NAME = "extract_flow.report.json"
READ_CHUNK = 32  # frames decoded per read: bounded memory whatever the video's length
FLOW_FORMAT_VERSION = 1


def encode_flow(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Displacements → 8-bit levels: clip to ±bound, map [-bound, bound] linearly onto [0, 255], round.

    Inputs: flow float H×W×2 (x, y) in pixels. Outputs: uint8 H×W×2.
    """
    clipped = np.clip(flow, -bound, bound)
    return np.round((clipped + bound) * (255.0 / (2 * bound))).astype(np.uint8)


def decode_flow(levels, bound: float = DEFAULT_BOUND):
    """Inverse of `encode_flow` (up to the rounding): 8-bit levels (a float numpy array or tensor) → pixels."""
    return levels * (2 * bound / 255.0) - bound


def flow_image(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """The image written for one flow field: uint8 H×W×3 in OpenCV's BGR order = (x, y, 128)."""
    image = np.full((*flow.shape[:2], 3), 128, dtype=np.uint8)
    image[..., :2] = encode_flow(flow, bound)
    return image


def read_flow_image(path: str | os.PathLike, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Read one written flow image back as displacements in pixels: float32 H×W×2 (x, y)."""
    # Pillow, not cv2.imread: once decord is imported, its bundled zlib breaks OpenCV's PNG decoder
    # ("libpng error: bad parameters to zlib"), while OpenCV's PNG and JPEG writers still work.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise VideoDecodeError(path, f"cannot read flow image: {err}") from err
    return decode_flow(rgb[..., 2::-1][..., :2].astype(np.float32), bound)  # BGR as written: (x, y)


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


def flow_dir_for(path: str) -> str:
    """The flow folder of a dataset entry, relative to the flow root: the entry path without a video extension."""
    p = Path(path)
    return (p.with_suffix("") if p.suffix.lower() in VIDEO_EXTENSIONS else p).as_posix()


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The completion record of a flow folder, or None when the folder is absent or unfinished."""
    marker = Path(folder) / DONE_MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


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
                    image = flow_image(estimator.calc(prev, grey, None), bound)
                    if not cv2.imwrite(str(folder / f"flow_{i:0{width}d}.{ext}"), image, params):
                        raise OSError(f"cannot write flow image into {folder}")
                prev = grey
        marker = {"version": FLOW_FORMAT_VERSION, "options": asdict(options), "frames": n - 1,
                  "source_frames": n, "fps": reader.fps, "height": prev.shape[0], "width": prev.shape[1]}
    tmp = folder / f".{DONE_MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, folder / DONE_MARKER)
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
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    paths = list(dict.fromkeys(e.path for e in entries))
    folders: dict[str, str] = {}
    for p in paths:
        other = folders.setdefault(flow_dir_for(p), p)
        if other != p:
            raise ValueError(f"{other} and {p} would share the flow folder {out / flow_dir_for(p)}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, FlowResult] = {}
    bar = tqdm(total=len(paths), desc=f"extract_flow ({options.method})", unit="video", disable=not progress)

    def record(result: FlowResult) -> None:
        results[result.path] = result
        bar.update()
        bar.set_postfix(done=sum(r.status == "done" for r in results.values()),
                        skipped=sum(r.status == "skipped" for r in results.values()),
                        bad=sum(r.status == "bad" for r in results.values()))

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_extract_one, str(root), p, str(out), options, backend) for p in paths]
            for future in futures:
                record(future.result())
    else:
        for p in paths:
            record(_extract_one(str(root), p, str(out), options, backend))
    bar.close()
    ordered = [results[p] for p in paths]
    report = out / REPORT_NAME
    summary = {"root": str(root), "out": str(out), **asdict(options), "backend": backend, "videos": len(ordered),
               "done": sum(r.status == "done" for r in ordered),
               "skipped": sum(r.status == "skipped" for r in ordered),
               "bad": sum(r.status == "bad" for r in ordered),
               "files": [asdict(r) for r in ordered if r.status == "bad"]}
    tmp = report.with_name(f".{report.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, report)
    return FlowReport(results=ordered, report=report)
