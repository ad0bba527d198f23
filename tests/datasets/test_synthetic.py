"""The synthetic corpus: rendering, determinism, the written layout, and real decodability."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import torch  # noqa: F401  (decord must be imported after torch: decord#251)
import decord  # noqa: E402
from PIL import Image

from vidssl.datasets.formats import davis, read_mask, synthetic
from vidssl.datasets.synthetic import CLASSES, make_synthetic, render_clip

REPO = Path(__file__).resolve().parents[2]
TINY = dict(num_videos=4, num_classes=2, height=64, width=64, min_frames=10, max_frames=14, davis_train_per_class=1)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("tiny"), seed=5, **TINY)


def read_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# rendering


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_render_clip_shapes_masks_and_audio(label: int) -> None:
    clip = render_clip(label, np.random.default_rng(label), height=64, width=96, fps=16, num_frames=20,
                       sample_rate=8000, num_objects=3)
    assert clip.frames.shape == (20, 64, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (20, 64, 96) and clip.masks.dtype == np.uint8
    assert clip.audio.shape == (10000,) and clip.audio.dtype == np.float32
    assert np.abs(clip.audio).max() <= 1.0 and np.isfinite(clip.audio).all()
    assert set(np.unique(clip.masks)) <= {0, 1, 2, 3}
    assert set(np.unique(clip.masks[0])) == {0, 1, 2, 3}  # every object is annotated in the first frame
    # the class object is the largest: a distractor never hides it completely
    assert (clip.masks == 1).reshape(20, -1).any(axis=1).all()


def test_render_clip_textured_background_and_lighting_change() -> None:
    clip = render_clip(0, np.random.default_rng(1), num_frames=48)
    background = clip.frames[0][clip.masks[0] == 0].astype(float)
    assert background.std(axis=0).min() > 10  # textured, not a flat colour
    brightness = clip.frames.reshape(48, -1).mean(axis=1)
    assert abs(brightness[-1] - brightness[0]) > 15  # a gradual lighting change over the clip


def test_sound_onsets_follow_motion_turning_points() -> None:
    # the "slider" bounces between the left and right walls: a note starts at each bounce
    sample_rate, fps, frames = 16000, 16, 64
    clip = render_clip(1, np.random.default_rng(3), fps=fps, num_frames=frames, sample_rate=sample_rate, num_objects=1)
    x = np.array([np.flatnonzero((m == 1).any(axis=0)).mean() for m in clip.masks])  # object's x per frame
    turns = np.flatnonzero(np.sign(np.diff(x[1:])) * np.sign(np.diff(x[:-1])) < 0) + 1
    assert len(turns) >= 2 and len(clip.onsets) == len(turns)
    assert np.abs(clip.onsets - turns / fps).max() <= 1.5 / fps
    # loud right after each onset, much quieter just before it
    window = int(0.03 * sample_rate)
    after = [np.abs(clip.audio[int(t * sample_rate):][:window]).mean() for t in clip.onsets]
    before = [np.abs(clip.audio[:int(t * sample_rate)][-window:]).mean() for t in clip.onsets]
    assert min(a / b for a, b in zip(after, before)) > 2.0


def test_render_clip_rejects_unknown_label() -> None:
    with pytest.raises(ValueError, match="label 3"):
        render_clip(3, np.random.default_rng(0), num_classes=3)


# --------------------------------------------------------------------------------------------------
# the written corpus (tiny)


def test_same_seed_same_corpus_other_seed_differs(tmp_path: Path, tiny_root: Path) -> None:
    again = make_synthetic(tmp_path / "again", seed=5, **TINY)
    other = make_synthetic(tmp_path / "other", seed=6, **TINY)
    assert (again / "manifest.csv").read_bytes() == (tiny_root / "manifest.csv").read_bytes()
    masks = sorted(p.relative_to(tiny_root) for p in (tiny_root / "davis/Annotations").rglob("*.png"))
    assert masks == sorted(p.relative_to(again) for p in (again / "davis/Annotations").rglob("*.png"))
    assert all((again / m).read_bytes() == (tiny_root / m).read_bytes() for m in masks)
    frames = sorted(p.relative_to(tiny_root) for p in (tiny_root / "davis/JPEGImages").rglob("*.jpg"))
    assert all((again / f).read_bytes() == (tiny_root / f).read_bytes() for f in frames)
    first = Path("davis/Annotations/480p/v000/00000.png")
    assert (other / first).read_bytes() != (tiny_root / first).read_bytes()


def test_layout_is_complete(tiny_root: Path) -> None:
    rows = read_manifest(tiny_root)
    assert [r["path"] for r in rows] == [f"videos/v{k:03d}.mp4" for k in range(4)]
    assert [int(r["label"]) for r in rows] == [0, 1, 0, 1]
    pairs = sorted((r["label"], r["split"]) for r in rows)
    assert pairs == [("0", "train"), ("0", "val"), ("1", "train"), ("1", "val")]
    assert len(synthetic(tiny_root, split="train")) == 2
    val_names = sorted(Path(r["path"]).stem for r in rows if r["split"] == "val")
    assert [s.name for s in davis(tiny_root / "davis", split="val")] == val_names
    assert len(davis(tiny_root / "davis", split="train")) == 2  # one train video per class
    for sequence in davis(tiny_root / "davis", split=None):
        assert len(sequence.frames) == len(sequence.annotations)  # every frame is annotated
        names = [f"{i:05d}" for i in range(len(sequence.frames))]
        assert [p.stem for p in sequence.frames] == [p.stem for p in sequence.annotations] == names


def test_videos_decode_with_pyav_and_decord_with_audio(tiny_root: Path) -> None:
    for sequence in davis(tiny_root / "davis", split=None):
        path = tiny_root / "videos" / f"{sequence.name}.mp4"
        jpegs = np.stack([np.array(Image.open(p)) for p in sequence.frames])
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.streams.audio[0].codec_context.name == "aac"
            assert container.streams.audio[0].sample_rate == 16000
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            container.seek(0)
            audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
        assert frames.shape == jpegs.shape == (len(sequence.frames), 64, 64, 3)
        assert np.abs(frames.astype(float) - jpegs).mean() < 8  # H.264 + 4:2:0 against JPEG, both lossy
        assert abs(audio.shape[1] / 16000 - len(frames) / 16) < 0.15
        assert np.abs(audio).max() > 0.1  # the sound survived encoding

        reader = decord.VideoReader(str(path))
        assert len(reader) == len(frames) and reader.get_avg_fps() == pytest.approx(16)
        assert np.abs(reader.get_batch([0, len(frames) - 1]).asnumpy().astype(float) - frames[[0, -1]]).mean() < 1


def test_existing_corpus_needs_overwrite(tmp_path: Path) -> None:
    small = dict(TINY, num_videos=2, min_frames=4, max_frames=4)
    make_synthetic(tmp_path, **small)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic(tmp_path, **small)
    make_synthetic(tmp_path, overwrite=True, **dict(small, num_videos=3, num_classes=3))
    assert len(read_manifest(tmp_path)) == 3 and len(list((tmp_path / "videos").iterdir())) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(num_videos=3, num_classes=4), "at least num_classes"), (dict(num_classes=9), "num_classes"),
     (dict(min_frames=10, max_frames=5), "min_frames"), (dict(num_objects=(0, 2)), "num_objects")],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic(tmp_path, **kwargs)


def test_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/make_synthetic.py"), f"out={tmp_path / 'corpus'}", "num_videos=2",
         "num_classes=2", "height=32", "width=32", "min_frames=4", "max_frames=4", "seed=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 2 videos" in result.stdout
    assert len(synthetic(tmp_path / "corpus")) == 2


# --------------------------------------------------------------------------------------------------
# the default corpus (generated once per test session)


def test_default_corpus_is_balanced_and_stratified(synthetic_root: Path) -> None:
    rows = read_manifest(synthetic_root)
    assert len(rows) == 80
    assert Counter(r["label"] for r in rows) == {str(c): 10 for c in range(8)}
    assert Counter(r["label"] for r in rows if r["split"] == "val") == {str(c): 3 for c in range(8)}
    assert len(davis(synthetic_root / "davis", split="val")) == 24
    assert len(davis(synthetic_root / "davis", split="train")) == 16


def test_default_corpus_masks_match_frames_and_clips_fit_dpc(synthetic_root: Path) -> None:
    for sequence in davis(synthetic_root / "davis", split=None):
        assert 48 <= len(sequence.frames) <= 64  # long enough for 4 blocks × 5 frames × stride 2
        for k in (0, len(sequence.frames) - 1):
            with Image.open(sequence.frames[k]) as frame:
                assert frame.size == (128, 128)
            mask = read_mask(sequence.annotations[k])
            assert mask.shape == (128, 128) and 1 in mask
        assert set(np.unique(read_mask(sequence.annotations[0]))) in ({0, 1, 2}, {0, 1, 2, 3})
