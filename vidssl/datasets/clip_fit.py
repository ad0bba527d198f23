"""Before training: do the task's clips fit the videos at all? One line if none of a sample of them does.

A clip layout longer than every video (DPC's paper preset needs 118 frames: 8 blocks × 5 frames at stride 3)
would otherwise surface only after the loader has met one too-short file after another. Reading a video's
header is cheap, so a few are probed before anything is built.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vidssl.datasets.decode import VideoDecodeError, VideoReader


def describe_sampler(sampler: Any) -> str:
    """``BlockSampler(num_seq=8, seq_len=5, stride=3)``: the layout's own fields."""
    if dataclasses.is_dataclass(sampler):
        fields = ", ".join(f"{f.name}={getattr(sampler, f.name)}" for f in dataclasses.fields(sampler)
                           if f.name != "random")
        return f"{type(sampler).__name__}({fields})"
    return type(sampler).__name__


def probe_headers(root: str | Path, paths: list[str], probe: int) -> list[tuple[int, bool]]:
    """``(frames, has sound)`` of the first ``probe`` videos that open (headers only)."""
    found = []
    for path in paths:
        if len(found) >= probe:
            break
        try:
            reader = VideoReader(Path(root) / path)
        except (VideoDecodeError, OSError, ValueError):
            continue  # an unreadable file (or a flow folder) is the dataset's to report
        try:
            found.append((reader.num_frames, reader.has_audio))
        finally:
            reader.close()
    return found


def silent_warning(root: str | Path, paths: list[str], *, probe: int = 8) -> str | None:
    """One line when most of the first ``probe`` videos have no sound (for a task that loads audio)."""
    found = probe_headers(root, paths, probe)
    silent = sum(not sound for _, sound in found)
    if found and silent * 2 > len(found):
        return (f"{silent} of the first {len(found)} videos under {root} have no sound, and this task loads audio: "
                "they will be skipped; loader.require_audio=false trains on silence instead, or task=sela "
                "clusters the video alone")
    return None


def check_clips_fit(root: str | Path, paths: list[str], sampler: Any, *, probe: int = 8,
                    key: str = "task.data.sampler") -> None:
    """Refuse (SystemExit, one line) when none of the first ``probe`` readable videos holds one clip of
    ``sampler`` (its ``span`` in frames); name the frames needed and the config keys that set them."""
    span = getattr(sampler, "span", None)
    if span is None:
        return
    lengths = [length for length, _ in probe_headers(root, paths, probe)]
    if lengths and max(lengths) < span:
        stride = getattr(sampler, "stride", None)
        knob = f"{key}.stride (now {stride})" if stride is not None else key
        have = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)}–{max(lengths)}"
        raise SystemExit(f"error: a clip of {describe_sampler(sampler)} needs {span} frames, but the "
                         f"{len(lengths)} videos checked under {root} have {have}; "
                         f"lower {knob} or the clip's frame count, or use longer videos")
