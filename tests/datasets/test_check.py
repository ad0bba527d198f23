"""check_dataset: a full decode finds truncated, bit-flipped and non-video files; the clean manifest loads."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from media_helpers import remux_faststart
from vidssl.datasets.check import check_dataset, check_file, report_path_for
from vidssl.datasets.formats import VideoEntry, csv_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, sample_clips) -> Path:
    """Two good videos and three bad ones that a plain open does not (all) catch."""
    root = tmp_path_factory.mktemp("damaged")
    videos = root / "videos"
    videos.mkdir()
    shutil.copy(sample_clips["carphone"], videos / "good_a.mp4")
    shutil.copy(sample_clips["bikes"], videos / "good_b.mp4")
    remux_faststart(sample_clips["bikes"], root / "faststart.mp4")
    data = (root / "faststart.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])  # opens: its header comes first
    flipped = bytearray(data)
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 10, len(data) * 9 // 10, 100):  # inside the media data, not the header
        flipped[i] ^= 0xFF
    (videos / "flipped.mp4").write_bytes(bytes(flipped))
    (videos / "text.mp4").write_text("not a video at all\n")
    (root / "faststart.mp4").unlink()
    return root


ENTRIES = [
    VideoEntry("videos/good_a.mp4", 0, "train"),
    VideoEntry("videos/cut.mp4", 1, "train"),
    VideoEntry("videos/good_b.mp4", 1, "val"),
    VideoEntry("videos/flipped.mp4", 0, "train"),
    VideoEntry("videos/good_a.mp4", 0, "val", 0.5, 2.0),  # a second, trimmed clip of the same file
    VideoEntry("videos/text.mp4", 2, "train"),
]


def test_bad_files_are_reported_with_the_decoders_messages_and_left_out(damaged, tmp_path):
    out = tmp_path / "clean.csv"
    report = check_dataset(damaged, ENTRIES, out, workers=2, progress=False)

    assert [r.path for r in report.results] == list(dict.fromkeys(e.path for e in ENTRIES))  # each file once
    verdicts = {r.path: r for r in report.results}
    assert {r.path for r in report.bad} == {"videos/cut.mp4", "videos/flipped.mp4", "videos/text.mp4"}
    assert verdicts["videos/good_b.mp4"].frames == verdicts["videos/good_b.mp4"].expected == 250
    assert verdicts["videos/good_a.mp4"].frames == 120
    cut = verdicts["videos/cut.mp4"]
    assert cut.expected == 250 and cut.frames < 200  # the header promises frames the file no longer has
    for result in report.bad:
        assert str(damaged / result.path) in result.error
    assert any("[h264]" in m for m in verdicts["videos/flipped.mp4"].messages)  # the decoder's own words

    # The report beside the manifest lists every bad file with its error.
    assert report.report == report_path_for(out) == tmp_path / "clean.report.json"
    written = json.loads(report.report.read_text())
    assert (written["checked"], written["bad"]) == (5, 3)
    assert {f["path"] for f in written["files"]} == {"videos/cut.mp4", "videos/flipped.mp4", "videos/text.mp4"}

    # The clean manifest keeps the good entries in order, trimming included, and loads as a CSV dataset.
    expected = [ENTRIES[0], ENTRIES[2], ENTRIES[4]]
    assert report.clean == expected
    with out.open() as f:
        assert next(csv.reader(f)) == ["path", "label", "split", "start", "end"]
    assert csv_manifest(damaged, manifest=out) == expected
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_decord_and_frame_folders_are_checked_too(damaged, tmp_path):
    assert check_file(damaged, "videos/good_a.mp4", backend="decord").ok
    cut = check_file(damaged, "videos/cut.mp4", backend="decord")
    assert not cut.ok and "cut.mp4" in cut.error

    folder = tmp_path / "seq"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(folder / f"{k:05d}.png")
    good = check_file(tmp_path, "seq", backend="frames")
    assert good.ok and good.frames == good.expected == 3
    (folder / "00001.png").write_bytes(b"\x89PNG broken")
    broken = check_file(tmp_path, "seq", backend="frames")
    assert not broken.ok and "00001.png" in broken.error


def test_the_command_line_checks_a_csv_dataset(damaged, tmp_path):
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for e in ENTRIES[:4]:
            writer.writerow([e.path, e.label, e.split])
    out = tmp_path / "clean.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, str(REPO / "tools/check_dataset.py"), "dataset=csv", f"dataset.root={damaged}",
         f"dataset.manifest={manifest}", f"out={out}", "workers=2"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert run.returncode == 0, run.stderr
    assert "checked 4 files" in run.stdout and "2 good, 2 bad" in run.stdout
    assert "BAD videos/cut.mp4" in run.stdout and "BAD videos/flipped.mp4" in run.stdout
    # dataset.split defaults to null here: the val entry is checked and kept too.
    assert csv_manifest(damaged, manifest=out) == [ENTRIES[0], ENTRIES[2]]
    # Nothing else lands in the working directory (no Hydra outputs/ folder).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.csv", "clean.report.json", "manifest.csv"]
