"""Output folders that hold only this run's results: a non-empty ``out=`` is refused, or cleaned on request.

Masks of an earlier run left beside new ones would be scored or viewed as if they were the new run's.
Cleaning removes only what the tool itself writes (its PNG masks and overlays), never other files.
"""

from __future__ import annotations

from pathlib import Path


def _written_by_propagate(out: Path) -> list[Path]:
    """The files propagate.py writes under ``out``: masks/*.png and overlay.* (a video), <sequence>/*.png and
    <sequence>/overlay.* (DAVIS)."""
    found = [p for pattern in ("overlay.*", "*/overlay.*") for p in sorted(out.glob(pattern))
             if p.suffix in (".mp4", ".gif")]
    found += sorted(out.glob("*/*.png"))
    return found


def prepare_out(out: str | Path, *, overwrite: bool, tool: str = "propagate.py") -> Path:
    """Make sure ``out`` holds no earlier results: absent or empty is fine; earlier results are refused
    (SystemExit naming the folder) unless ``overwrite``, which deletes them (and folders they leave empty).
    Files the tool does not write are left where they are."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: out={out} is a file; {tool} writes a folder there")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    earlier = _written_by_propagate(out)
    if not overwrite:
        raise SystemExit(f"error: out={out} is not empty ({len(earlier)} earlier result files, e.g. "
                         f"{earlier[0].relative_to(out) if earlier else next(out.iterdir()).name}); "
                         f"choose a new out=, or pass overwrite=true to replace its results")
    for path in earlier:
        path.unlink()
    for folder in {p.parent for p in earlier if p.parent != out}:
        if not any(folder.iterdir()):
            folder.rmdir()
    return out
