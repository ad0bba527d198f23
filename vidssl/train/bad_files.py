"""The bad files of a run, summed up by kind in one line: without sound, too short, unreadable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vidssl.datasets.dataset import NO_AUDIO


def kind_of(reason: str) -> str:
    """``"without sound"`` | ``"too short"`` | ``"unreadable"``, from a reason the dataset recorded."""
    if NO_AUDIO in reason or "no audio" in reason:
        return "without sound"
    if "ClipTooShortError" in reason or "too short" in reason or "frames but the video has" in reason \
            or "a clip spans" in reason:
        return "too short"
    return "unreadable"


def summarize_bad_files(reasons: Iterable[str], total: int) -> str | None:
    """One line: how many files of ``total`` were set aside, by kind; with the remedy when most lack sound.

    None when there were none.
    """
    kinds = Counter(kind_of(r) for r in reasons)
    if not kinds:
        return None
    count = sum(kinds.values())
    line = (f"{count} of {total} files set aside ("
            + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()) + ")")
    if kinds["without sound"] * 2 > total:
        line += ("; most files have no sound: loader.require_audio=false trains on silence, or task=sela "
                 "clusters the video alone")
    return line
