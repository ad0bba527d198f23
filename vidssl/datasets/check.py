"""Dataset health check: decode every file fully, before training finds the broken ones.

Flipped bytes decode "successfully" in both decord and PyAV (the H.264 decoder conceals the damage and only
logs it), and a file cut short still opens when its header comes first, so a file is only known to be good
after a full decode. `check_dataset` decodes every file in parallel processes and calls a file bad when

- the decoder raises (the file cannot be opened or a packet cannot be decoded),
- the decoder logs errors while decoding (concealed corruption; its own messages are kept), or
- the number of decoded video frames differs from the header's count by more than `FRAME_TOLERANCE`.

It writes a clean manifest of the good entries (``path,label,split[,start,end]``, paths relative to the
root) and, beside it, ``<out stem>.report.json`` listing every bad file with the decoder's messages.
`tools/check_dataset.py` is the command-line entry point.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import av
import av.logging
from tqdm import tqdm

from vidssl.datasets.decode import BACKENDS, VideoDecodeError, VideoReader, probe
from vidssl.datasets.formats import VideoEntry

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
    frames = 0
    error: str | None = None
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught, av.logging.Capture(local=False) as logs:
            warnings.simplefilter("always")
            try:
                expected = probe(full, backend).num_frames
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
    )


@dataclass(frozen=True)
class CheckReport:
    """Outcome of `check_dataset`: every file's verdict, the clean entries and where they were written."""

    results: list[CheckResult]
    clean: list[VideoEntry]
    manifest: Path
    report: Path

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for e in entries:
            row = [e.path, e.label, e.split]
            if trimmed:
                row += ["" if e.start is None else e.start, "" if e.end is None else e.end]
            writer.writerow(row)
    os.replace(tmp, path)


def check_dataset(
    root: str | os.PathLike,
    entries: Sequence[VideoEntry],
    out: str | os.PathLike,
    *,
    backend: str = "av",
    workers: int = 2,
    progress: bool = True,
) -> CheckReport:
    """Decode every file of `entries` fully in `workers` processes; write the clean manifest and a report.

    Args:
        root: the dataset root; entry paths are relative to it.
        entries: the dataset's entries (several entries may share a file; it is decoded once).
        out: the clean manifest CSV to write; the report goes to `report_path_for(out)`.
        backend: how to decode (one of BACKENDS); "av" also decodes the audio stream.
        workers: decoding processes (each decodes single-threaded).
        progress: show a progress bar.
    Returns:
        A CheckReport; entries whose file is bad are left out of the clean manifest.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    root, out = Path(root), Path(out)
    paths = list(dict.fromkeys(e.path for e in entries))
    bar = tqdm(total=len(paths), desc="check_dataset", unit="file", disable=not progress)
    results: dict[str, CheckResult] = {}
    if workers > 1:
        # Processes, not threads: FFmpeg's log capture is per process, and a decoder crash stays in its worker.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(check_file, root, p, backend=backend) for p in paths]
            for future in futures:
                result = future.result()
                results[result.path] = result
                bar.update()
    else:
        for p in paths:
            results[p] = check_file(root, p, backend=backend)
            bar.update()
    bar.close()
    ordered = [results[p] for p in paths]
    clean = [e for e in entries if results[e.path].ok]
    write_manifest(out, clean)
    report = report_path_for(out)
    bad = [asdict(r) for r in ordered if not r.ok]
    summary = {"root": str(root), "backend": backend, "checked": len(ordered), "bad": len(bad), "files": bad}
    tmp = report.with_name(f".{report.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, report)
    return CheckReport(results=ordered, clean=clean, manifest=out, report=report)
