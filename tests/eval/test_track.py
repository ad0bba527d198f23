"""Tracking your own video: `tools/propagate.py video=... mask=...` on a real sample clip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vidssl.datasets.decode import VideoReader
from vidssl.datasets.formats import DAVIS_PALETTE, read_mask, write_mask
from vidssl.eval.features import PixelFeatures
from vidssl.eval.track import read_first_mask, track_video

REPO = Path(__file__).resolve().parents[2]


def ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def test_track_a_sample_clip_from_the_command_line(sample_clips, tmp_path):
    clip = sample_clips["carphone"]  # 176×144, 29.97 fps: the speaker's head in the middle
    height, width = VideoReader(clip).size
    head = ellipse(height, width, 0.4 * height, 0.5 * width, height / 4, width / 7)
    Image.fromarray(head.astype(np.uint8) * 255).save(tmp_path / "first.png")  # a plain 0/255 mask
    out = tmp_path / "tracked"
    result = subprocess.run([sys.executable, "tools/propagate.py", f"video={clip}", f"mask={tmp_path / 'first.png'}",
                             f"out={out}", "features=pixels", "max_frames=12"], cwd=REPO, check=True,
                            capture_output=True, text=True)
    assert "tracked 1 object(s) through 12 frames" in result.stdout
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == [f"{t:05d}.png" for t in range(12)]
    np.testing.assert_array_equal(read_mask(masks[0]), head.astype(np.uint8))
    last = read_mask(masks[-1]) == 1
    # a head that hardly moves in 12 frames: the mask stays on it
    assert (last & head).sum() / (last | head).sum() > 0.6
    overlay = VideoReader(out / "overlay.mp4")
    assert overlay.num_frames == 12 and overlay.size == (144, 176) and abs(overlay.fps - 29.97) < 0.01
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == 12 and gif.size == (176, 144)
    assert "track carphone" in result.stderr  # the progress bar


def test_track_several_objects_resized(sample_clips, tmp_path):
    clip = sample_clips["bikes"]  # 640×272
    mask = np.zeros((272, 640), np.uint8)
    mask[ellipse(272, 640, 150, 200, 40, 60)] = 1
    mask[ellipse(272, 640, 150, 450, 40, 60)] = 2
    write_mask(tmp_path / "first.png", mask)  # palette PNG, two objects
    result = track_video(clip, tmp_path / "first.png", tmp_path / "out", PixelFeatures(), short_side=136,
                         max_frames=5, gif_width=160, progress=False)
    assert result["objects"] == 2 and result["frames"] == 5
    first = read_mask(tmp_path / "out" / "masks" / "00000.png")
    assert first.shape == (136, 320) and set(np.unique(first)) == {0, 1, 2}
    with Image.open(result["gif"]) as gif:
        assert gif.size == (160, 68)


def test_read_first_mask_formats(tmp_path):
    indices = np.zeros((6, 8), np.uint8)
    indices[1:3, 1:3], indices[3:5, 4:7] = 1, 3
    write_mask(tmp_path / "palette.png", indices)
    np.testing.assert_array_equal(read_first_mask(tmp_path / "palette.png"), indices)
    Image.fromarray(indices).save(tmp_path / "grey.png")  # greyscale indices
    np.testing.assert_array_equal(read_first_mask(tmp_path / "grey.png"), indices)
    binary = (indices > 0).astype(np.uint8)
    Image.fromarray(binary * 255).save(tmp_path / "binary.png")
    np.testing.assert_array_equal(read_first_mask(tmp_path / "binary.png"), binary)
    Image.fromarray(binary.astype(bool)).save(tmp_path / "bits.png")  # mode "1"
    np.testing.assert_array_equal(read_first_mask(tmp_path / "bits.png"), binary)
    Image.fromarray(np.repeat(binary[..., None] * 255, 3, -1)).save(tmp_path / "bw.png")  # RGB black/white
    np.testing.assert_array_equal(read_first_mask(tmp_path / "bw.png"), binary)
    Image.fromarray(DAVIS_PALETTE[indices]).save(tmp_path / "rgb.png")  # RGB in palette colours
    np.testing.assert_array_equal(read_first_mask(tmp_path / "rgb.png"), indices)
    odd = np.full((6, 8, 3), 7, np.uint8)
    Image.fromarray(odd).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match="odd.png.*outside the DAVIS palette"):
        read_first_mask(tmp_path / "odd.png")


def test_track_errors_name_the_problem(sample_clips, tmp_path):
    write_mask(tmp_path / "small.png", np.ones((10, 10), np.uint8))
    with pytest.raises(ValueError, match="small.png is 10×10 but the frames of .*carphone.* are 144×176"):
        track_video(sample_clips["carphone"], tmp_path / "small.png", tmp_path / "out", PixelFeatures(),
                    progress=False)
    write_mask(tmp_path / "empty.png", np.zeros((144, 176), np.uint8))
    with pytest.raises(ValueError, match="no object"):
        track_video(sample_clips["carphone"], tmp_path / "empty.png", tmp_path / "out", PixelFeatures(),
                    progress=False)
    result = subprocess.run([sys.executable, "tools/propagate.py", f"video={sample_clips['carphone']}",
                             f"out={tmp_path}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "mask=PNG" in result.stderr
