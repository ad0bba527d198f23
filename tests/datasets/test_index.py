"""The metadata index: probed once in parallel, reused, re-probed when a file's size or mtime changes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import vidssl.datasets.index as index_module
from vidssl.datasets.decode import VideoMeta, probe
from vidssl.datasets.index import INDEX_VERSION, build_index, index_path_for


@pytest.fixture
def dataset(tmp_path, sample_clips):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    shutil.copy(sample_clips["bikes"], root / "videos/bikes.mp4")
    shutil.copy(sample_clips["carphone"], root / "videos/carphone.mp4")
    (root / "videos/broken.mp4").write_text("not a video")
    return root


@pytest.fixture
def probes(monkeypatch) -> list[str]:
    """Records every file the index probes (threads share the patched module attribute)."""
    calls: list[str] = []

    def counting_probe(path, backend="av"):
        calls.append(path.name)
        return probe(path, backend)

    monkeypatch.setattr(index_module, "probe", counting_probe)
    return calls


PATHS = ["videos/bikes.mp4", "videos/carphone.mp4", "videos/broken.mp4", "videos/missing.mp4"]


def test_first_build_probes_every_file_in_parallel_and_records_errors(dataset, probes):
    index_path = dataset / "manifest.index.json"
    result = build_index(dataset, PATHS, index_path, workers=2)
    assert list(result) == PATHS
    assert result["videos/bikes.mp4"] == probe(dataset / "videos/bikes.mp4")
    assert isinstance(result["videos/carphone.mp4"], VideoMeta) and result["videos/carphone.mp4"].num_frames == 120
    assert isinstance(result["videos/broken.mp4"], str) and "broken.mp4: cannot open" in result["videos/broken.mp4"]
    assert "missing.mp4: file not found" in result["videos/missing.mp4"]
    assert sorted(probes) == ["bikes.mp4", "broken.mp4", "carphone.mp4"]

    data = json.loads(index_path.read_text())
    assert data["version"] == INDEX_VERSION and data["backend"] == "av"
    assert set(data["files"]) == {"videos/bikes.mp4", "videos/carphone.mp4", "videos/broken.mp4"}  # not missing
    row = data["files"]["videos/bikes.mp4"]
    stat = (dataset / "videos/bikes.mp4").stat()
    assert (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    assert {p.name for p in dataset.iterdir()} == {"videos", "manifest.index.json"}  # no temporary file left


def test_a_second_build_reuses_every_valid_row(dataset, probes):
    index_path = dataset / "manifest.index.json"
    first = build_index(dataset, PATHS, index_path)
    probes.clear()
    mtime = index_path.stat().st_mtime_ns
    again = build_index(dataset, PATHS, index_path)
    assert again == first
    assert probes == []  # nothing probed, not even the broken file; the missing one is only stat'ed
    assert index_path.stat().st_mtime_ns == mtime  # nothing changed, nothing written


def test_a_touched_changed_or_new_file_is_probed_again(dataset, sample_clips, probes):
    index_path = index_path_for(dataset / "manifest.csv")
    assert index_path == dataset / "manifest.index.json"
    build_index(dataset, PATHS[:3], index_path)
    probes.clear()

    stat = (dataset / "videos/bikes.mp4").stat()
    os.utime(dataset / "videos/bikes.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touch
    shutil.copy(sample_clips["carphone"], dataset / "videos/broken.mp4")  # the broken file gets repaired
    shutil.copy(sample_clips["carphone"], dataset / "videos/new.mp4")
    result = build_index(dataset, [*PATHS[:3], "videos/new.mp4"], index_path)
    assert sorted(probes) == ["bikes.mp4", "broken.mp4", "new.mp4"]
    assert result["videos/broken.mp4"] == result["videos/carphone.mp4"]

    probes.clear()
    assert build_index(dataset, ["videos/new.mp4"], index_path) == {"videos/new.mp4": result["videos/new.mp4"]}
    assert probes == []
    rows = json.loads(index_path.read_text())["files"]
    assert len(rows) == 4  # rows of paths not asked for this time are kept


def test_an_unreadable_index_or_one_for_another_backend_is_rebuilt(dataset, probes):
    index_path = dataset / "manifest.index.json"
    index_path.write_text("{ half a json file")
    result = build_index(dataset, PATHS[:2], index_path, workers=1)
    assert all(isinstance(m, VideoMeta) for m in result.values()) and len(probes) == 2
    probes.clear()
    decord = build_index(dataset, PATHS[:2], index_path, backend="decord")
    assert len(probes) == 2 and all(m.backend == "decord" for m in decord.values())
    assert json.loads(index_path.read_text())["backend"] == "decord"
    with pytest.raises(ValueError, match="unknown video backend"):
        build_index(dataset, PATHS, index_path, backend="opencv")
