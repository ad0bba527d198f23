"""Dataset health check: decode every file fully, before training finds the broken ones.

Flipped bytes decode "successfully" in both decord and PyAV (the H.264 decoder conceals the damage and only
logs it), and a file cut short still opens when its header comes first, so a file is only known to be good
after a full decode. `check_dataset` decodes every file in parallel processes and calls a file bad when

- the decoder raises (the file cannot be opened or a packet cannot be decoded),
- the decoder logs errors while decoding (concealed corruption; its own messages are kept), or
- the number of decoded video frames differs from the header's count by more than `FRAME_TOLERANCE`.

It also drops, entry by entry, what cannot serve training: a file (or trimmed segment) shorter than
``min_frames``, a trimmed row whose segment runs past the end of its file, a file without sound when
``require_audio`` is set, and a row whose file does not exist (``missing``, from a loader's
``skip_missing``). It writes a clean manifest of the kept entries (``path,label,split[,start,end]``,
paths relative to the root), beside it ``<out stem>.report.json`` listing every bad file with the
decoder's messages and every dropped entry with its reason, and ``classes.csv`` (``index,name``) when
the layout names its classes.
`tools/check_dataset.py` is the command-line entry point.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import av
import av.logging

from vidssl.datasets.decode import BACKENDS, VideoDecodeError, VideoReader, probe
from vidssl.datasets.dataset import segment
from vidssl.datasets.formats import VideoEntry
from vidssl.datasets.pool import over_videos
from vidssl.files import atomic_write_text

FRAME_TOLERANCE = 1  # containers often disagree with the decoder by one frame (edit lists, a trailing frame)
MAX_MESSAGES = 20  # decoder log lines kept per file; a broken file can log thousands
READ_CHUNK = 32  # frames per read for decord and frame folders: bounded memory whatever the length


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one file. `frames` is what a full decode produced, `expected` the header's count."""

    path: str
    ok: bool
    frames: int
    expected: int | None
    error: str | None
    messages: tuple[str, ...] = ()
    fps: float | None = None
    has_audio: bool | None = None


def _decode_av(path: Path) -> tuple[int, str | None]:
    """Decode every video and audio packet; returns (video frames decoded, the error that stopped it)."""
    video_frames = 0
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            streams = container.streams.video[:1] + container.streams.audio[:1]
            for frame in container.decode(*streams):
                video_frames += isinstance(frame, av.VideoFrame)
    except av.FFmpegError as e:
        return video_frames, f"{path}: decoding failed after {video_frames} frames: {e}"
    return video_frames, None


def _decode_reader(path: Path, backend: str) -> int:
    """Decode every frame through VideoReader (decord, frame folders), a chunk at a time."""
    with VideoReader(path, backend=backend, num_threads=1) as reader:
        for start in range(0, reader.num_frames, READ_CHUNK):
            reader.get_frames(range(start, min(start + READ_CHUNK, reader.num_frames)))
        return reader.num_frames


def check_file(root: str | os.PathLike, path: str, *, backend: str = "av") -> CheckResult:
    """Decode `root/path` fully and judge it (see the module docstring).

    Runs in a worker process: it sets FFmpeg's log level for the whole process to collect the decoder's
    messages, and restores it afterwards.
    """
    full = Path(root) / path
    expected: int | None = None
    fps: float | None = None
    has_audio: bool | None = None
    frames = 0
    error: str | None = None
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught, av.logging.Capture(local=False) as logs:
            warnings.simplefilter("always")
            try:
                meta = probe(full, backend)
                expected, fps, has_audio = meta.num_frames, meta.fps, meta.has_audio
                if backend == "av":
                    frames, error = _decode_av(full)
                else:
                    frames = _decode_reader(full, backend)
            except VideoDecodeError as e:
                error = str(e)
    finally:
        av.logging.set_level(previous_level)
    messages = [f"[{name}] {text.strip()}" for level, name, text in logs if level <= av.logging.WARNING]
    messages += [f"[python] {w.category.__name__}: {w.message}" for w in caught]
    decoder_errors = [text for level, _, text in logs if level <= av.logging.ERROR]
    if error is None and decoder_errors:
        error = f"{full}: the decoder reported {len(decoder_errors)} errors (corrupt data)"
    if error is None and expected is not None and abs(frames - expected) > FRAME_TOLERANCE:
        error = f"{full}: decoded {frames} frames but the header says {expected} (truncated or corrupt file)"
    return CheckResult(
        path=path,
        ok=error is None,
        frames=frames,
        expected=expected,
        error=error,
        messages=tuple(messages[:MAX_MESSAGES]),
        fps=fps,
        has_audio=has_audio,
    )


@dataclass(frozen=True)
class CheckReport:
    """Outcome of `check_dataset`: every file's verdict, the clean entries and where they were written."""

    results: list[CheckResult]
    clean: list[VideoEntry]
    manifest: Path
    report: Path
    dropped: list[dict] = field(default_factory=list)  # {"path", "segment", "reason"} per entry left out
    classes: Path | None = None

    @property
    def bad(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]


def report_path_for(out: str | os.PathLike) -> Path:
    """The bad-file report written beside a clean manifest: ``clean.csv`` -> ``clean.report.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def write_manifest(path: str | os.PathLike, entries: Sequence[VideoEntry]) -> None:
    """Write entries as ``path,label,split[,start,end]`` (start/end only when some entry is trimmed)."""
    trimmed = any(e.start is not None or e.end is not None for e in entries)
    columns = ["path", "label", "split"] + (["start", "end"] if trimmed else [])
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(columns)
    for e in entries:
        row = [e.path, e.label, e.split]
        if trimmed:
            row += ["" if e.start is None else e.start, "" if e.end is None else e.end]
        writer.writerow(row)
    atomic_write_text(Path(path), text.getvalue())


def entry_problem(entry: VideoEntry, result: CheckResult, *, min_frames: int = 0,
                  require_audio: bool = False) -> str | None:
    """Why `entry` cannot serve training given its file's verdict, or None when it can."""
    if not result.ok:
        return result.error
    frames = result.frames
    if (entry.start is not None or entry.end is not None) and result.fps:
        first = round((entry.start or 0) * result.fps)
        last = result.frames if entry.end is None else round(entry.end * result.fps)
        if last > result.frames + FRAME_TOLERANCE or first >= result.frames:
            return (f"the segment {segment(entry)} runs past the end of the file "
                    f"({result.frames} frames, {result.frames / result.fps:.2f} s)")
        frames = last - first
    if frames < min_frames:
        return f"{frames} frames, fewer than min_frames={min_frames}"
    if require_audio and result.has_audio is False:
        return "no audio stream (require_audio=true)"
    return None


def write_classes(path: str | os.PathLike, entries: Sequence[VideoEntry]) -> bool:
    """Write ``index,name`` rows for the labelled entries that carry a class name; False when none does."""
    names = {e.label: e.label_name for e in entries if e.label >= 0 and e.label_name}
    if not names:
        return False
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "name"])
        writer.writerows(sorted(names.items()))
    return True


def check_dataset(
    root: str | os.PathLike,
    entries: Sequence[VideoEntry],
    out: str | os.PathLike,
    *,
    backend: str = "av",
    workers: int = 2,
    progress: bool = True,
    min_frames: int = 0,
    require_audio: bool = False,
    missing: Sequence[str] = (),
) -> CheckReport:
    """Decode every file of `entries` fully in `workers` processes; write the clean manifest and a report.

    Args:
        root: the dataset root; entry paths are relative to it.
        entries: the dataset's entries (several entries may share a file; it is decoded once).
        out: the clean manifest CSV to write; the report goes to `report_path_for(out)`.
        backend: how to decode (one of BACKENDS); "av" also decodes the audio stream.
        workers: decoding processes (each decodes single-threaded).
        progress: show a progress bar.
        min_frames: drop files (trimmed rows: segments) with fewer frames (0: keep all).
        require_audio: drop files without an audio stream.
        missing: paths the loader dropped because they do not exist (listed in the report).
    Returns:
        A CheckReport; entries that cannot serve (see `entry_problem`) are left out of the clean manifest
        and listed in the report; ``classes.csv`` beside the manifest maps label indices to names.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    root, out = Path(root), Path(out)
    paths = list(dict.fromkeys(e.path for e in entries))
    ordered = over_videos(functools.partial(check_file, root, backend=backend), paths, workers=workers,
                          desc="check_dataset", unit="file", progress=progress)
    results = {r.path: r for r in ordered}
    clean, dropped = [], [{"path": p, "segment": "", "reason": "the file does not exist"} for p in missing]
    for e in entries:
        problem = entry_problem(e, results[e.path], min_frames=min_frames, require_audio=require_audio)
        if problem is None:
            clean.append(e)
        else:
            dropped.append({"path": e.path, "segment": segment(e), "reason": problem})
    write_manifest(out, clean)
    classes = out.with_name("classes.csv")
    if not write_classes(classes, entries):
        classes = None
    report = report_path_for(out)
    bad = [asdict(r) for r in ordered if not r.ok]
    summary = {"root": str(root), "backend": backend, "checked": len(ordered), "bad": len(bad), "files": bad,
               "dropped_entries": dropped}
    atomic_write_text(report, json.dumps(summary, indent=1))
    return CheckReport(results=ordered, clean=clean, manifest=out, report=report, dropped=dropped, classes=classes)
