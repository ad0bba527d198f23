"""VideoReader on real clips: sparse seeks equal a full sequential decode, metadata, audio, bad files."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import multiprocessing
import os
import pickle
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image

from media_helpers import remux_faststart
from vidssl.datasets.decode import BACKENDS, DEFAULT_BACKEND, VideoDecodeError, VideoMeta, VideoReader, probe

CLIPS = ("bigbuckbunny", "bikes", "carphone")
VIDEO_BACKENDS = ("av", "decord")


def scattered(n: int) -> list[int]:
    """Unsorted indices with a repeat, both ends, and jumps across keyframes (bikes: 0, 30, 76, 137, 187, 242)."""
    return [n - 1, 3, 3, n // 2, 0, 2 * n // 3 + 1, 40, 2]


@pytest.fixture(scope="module")
def reference(sample_clips) -> dict[str, dict]:
    """A plain sequential PyAV decode of each clip: the frame count and the frames at `scattered` indices."""
    refs = {}
    for name, path in sample_clips.items():
        with av.open(str(path)) as container:
            frames = list(container.decode(video=0))  # av.VideoFrame objects; RGB only for the few we compare
        wanted = set(scattered(len(frames)))
        refs[name] = {
            "count": len(frames),
            "frames": {i: frames[i].to_ndarray(format="rgb24") for i in wanted},
        }
    return refs


@pytest.fixture(scope="module")
def reference_audio(sample_clips) -> torch.Tensor:
    """bigbuckbunny's whole soundtrack, decoded sequentially and mixed to mono at its own rate (48 kHz)."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=48000)
    chunks = []
    with av.open(str(sample_clips["bigbuckbunny"])) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
    chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return torch.from_numpy(np.concatenate(chunks, axis=1))


# ----------------------------------------------------------------------------------------------- frames
@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
@pytest.mark.parametrize("clip", CLIPS)
def test_sparse_frames_equal_a_full_sequential_decode(sample_clips, reference, clip, backend):
    ref = reference[clip]
    reader = VideoReader(sample_clips[clip], backend=backend)
    indices = scattered(ref["count"])
    frames = reader.get_frames(indices)
    assert frames.dtype == torch.uint8 and frames.shape == (len(indices), *reader.size, 3)
    for k, i in enumerate(indices):
        diff = np.abs(frames[k].numpy().astype(np.int16) - ref["frames"][i]).mean()
        assert diff < 2, f"{clip} frame {i} via {backend}: mean abs diff {diff:.2f}/255"
    # The reader stays usable: a second call, going backwards, gives the same frames.
    again = reader.get_frames(indices[::-1])
    assert torch.equal(again, frames.flip(0))


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_metadata_of_the_sample_clips(sample_clips, reference, backend):
    expected = {  # (frames, fps, (H, W), has_audio, audio_rate)
        "bigbuckbunny": (132, 25.0, (720, 1280), True, 48000),
        "bikes": (250, 25.0, (272, 640), False, None),
        "carphone": (120, 30000 / 1001, (144, 176), False, None),
    }
    for clip, (frames, fps, size, has_audio, audio_rate) in expected.items():
        reader = VideoReader(sample_clips[clip], backend=backend)
        assert reader.num_frames == frames == reference[clip]["count"]
        assert reader.fps == pytest.approx(fps)
        assert reader.duration == pytest.approx(frames / fps, abs=1e-3)
        assert reader.size == size
        assert (reader.has_audio, reader.audio_rate) == (has_audio, audio_rate)
        assert reader.meta.backend == backend
        assert dataclasses.replace(probe(sample_clips[clip], backend), duration=0) == dataclasses.replace(
            reader.meta, duration=0
        )


def test_default_backend_and_probe(sample_clips):
    assert DEFAULT_BACKEND in BACKENDS
    assert VideoReader(sample_clips["bikes"]).backend == DEFAULT_BACKEND
    meta = probe(sample_clips["bikes"])
    assert isinstance(meta, VideoMeta) and meta.num_frames == 250 and meta.backend == "av"


def test_out_of_range_and_empty_requests(sample_clips):
    reader = VideoReader(sample_clips["carphone"])
    with pytest.raises(IndexError, match="carphone_distorted.mp4.*outside"):
        reader.get_frames([0, 120])
    with pytest.raises(IndexError):
        reader.get_frames([-1])
    assert reader.get_frames([]).shape == (0, 144, 176, 3)
    assert torch.equal(reader.get_frames(torch.tensor([5, 7])), reader.get_frames(np.array([5, 7])))


def test_a_header_that_over_counts_by_a_frame_repeats_the_last_frame(sample_clips, reference):
    reader = VideoReader(sample_clips["carphone"])
    reader.meta = dataclasses.replace(reader.meta, num_frames=121)  # as a container's header may claim
    frames = reader.get_frames([119, 120])
    assert torch.equal(frames[0], frames[1])
    assert np.abs(frames[0].numpy().astype(np.int16) - reference["carphone"]["frames"][119]).mean() < 2


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_a_forked_worker_reopens_instead_of_sharing_the_parents_decoder(sample_clips, backend):
    reader = VideoReader(sample_clips["bikes"], backend=backend)
    expected = _checksum(reader)  # the parent's decoder now runs threads, which the child will not have
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_decode_in_child, args=(reader, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail(f"{backend}: a reader used after fork hung (decord#294)")
    assert child.exitcode == 0 and queue.get(timeout=5) == expected
    assert _checksum(reader) == expected  # the parent's reader still works


def test_a_forked_child_may_drop_the_parents_reader(sample_clips):
    reader = VideoReader(sample_clips["bikes"])
    reader.get_frames([100, 101])
    pid = os.fork()
    if pid == 0:  # the child: freeing the parent's frame-threaded decoder here would block forever
        del reader
        gc.collect()  # the container and its streams form a cycle: only the collector frees them
        os._exit(0)
    deadline = time.monotonic() + 60
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if status[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("a forked child hung freeing the reader it inherited")
    assert os.waitstatus_to_exitcode(status[1]) == 0


def _checksum(reader: VideoReader) -> str:
    # hashlib, not a torch reduction: torch's own thread pool is not fork-safe either (DataLoader workers
    # run with one thread for that reason), and this test is about the decoder.
    return hashlib.sha1(reader.get_frames([100, 101]).numpy().tobytes()).hexdigest()


def _decode_in_child(reader: VideoReader, queue) -> None:
    queue.put(_checksum(reader))


def test_a_pickled_reader_decodes_the_same_frames(sample_clips):
    reader = VideoReader(sample_clips["carphone"])
    before = reader.get_frames([10, 50])
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.meta == reader.meta and torch.equal(copy.get_frames([10, 50]), before)


# ------------------------------------------------------------------------------------------------ audio
def test_audio_at_the_native_rate_is_the_exact_slice_of_the_soundtrack(sample_clips, reference_audio):
    reader = VideoReader(sample_clips["bigbuckbunny"])
    audio = reader.get_audio(1.3, 0.5, 48000)
    start = round(1.3 * 48000)
    assert audio.shape == (1, 24000) and audio.dtype == torch.float32
    torch.testing.assert_close(audio, reference_audio[:, start : start + 24000], atol=1e-6, rtol=0)


def test_audio_resampled_to_16k_mono_and_stereo(sample_clips, reference_audio):
    reader = VideoReader(sample_clips["bigbuckbunny"])
    mono = reader.get_audio(1.3, 0.5, 16000)
    assert mono.shape == (1, 8000)
    assert -1 <= mono.min() and mono.max() <= 1 and mono.abs().mean() > 1e-3  # real sound, not silence
    expected = torchaudio.functional.resample(reference_audio, 48000, 16000)[:, 20800:28800]
    assert (mono - expected).abs().max() < 1e-3  # FFmpeg's and torchaudio's sinc resamplers agree
    stereo = reader.get_audio(1.3, 0.5, 16000, mono=False)  # the 5.1 track mixed down to two channels
    assert stereo.shape == (2, 8000) and -1 <= stereo.min() and stereo.max() <= 1
    assert torch.corrcoef(torch.cat([stereo.mean(0, keepdim=True), mono]))[0, 1] > 0.9


def test_audio_past_the_end_is_zero_padded(sample_clips, reference_audio):
    reader = VideoReader(sample_clips["bigbuckbunny"])
    audio = reader.get_audio(5.0, 1.0, 16000)  # the soundtrack ends at 5.312 s
    assert audio.shape == (1, 16000)
    tail_start = round((reference_audio.shape[1] / 48000 - 5.0) * 16000)
    assert audio[:, : tail_start - 10].abs().max() > 0 and not audio[:, tail_start + 10 :].any()
    assert not reader.get_audio(30.0, 0.25, 8000).any()


def test_a_video_without_audio_raises_naming_the_path(sample_clips):
    reader = VideoReader(sample_clips["bikes"])
    with pytest.raises(VideoDecodeError, match=r"bikes\.mp4: no audio stream"):
        reader.get_audio(0.0, 1.0, 16000)


# ------------------------------------------------------------------------------------------ frame folders
def test_a_folder_of_jpeg_and_png_frames(tmp_path):
    rng = np.random.default_rng(0)
    # Smooth images survive JPEG nearly intact; noise would not.
    ramp = np.linspace(0, 255, 32)[None, :, None] * np.ones((24, 32, 3))
    images = [np.clip(ramp + 20 * k + rng.normal(0, 1, ramp.shape), 0, 255).astype(np.uint8) for k in range(5)]
    folder = tmp_path / "seq"
    folder.mkdir()
    for k in (3, 0, 4, 1, 2):  # written out of order; read sorted by name
        Image.fromarray(images[k]).save(folder / (f"{k:05d}.png" if k % 2 else f"{k:05d}.jpg"), quality=95)
    (folder / "notes.txt").write_text("not a frame")
    reader = VideoReader(folder, fps=24.0)  # a directory selects the frames backend
    assert reader.backend == "frames"
    assert (reader.num_frames, reader.fps, reader.size, reader.has_audio) == (5, 24.0, (24, 32), False)
    assert reader.duration == pytest.approx(5 / 24)
    frames = reader.get_frames([4, 1, 1, 0])
    assert frames.shape == (4, 24, 32, 3) and frames.dtype == torch.uint8
    assert torch.equal(frames[1], torch.from_numpy(images[1]))  # PNG: lossless
    for k, i in enumerate([4, 1, 1, 0]):
        assert np.abs(frames[k].numpy().astype(np.int16) - images[i]).mean() < 2
    assert probe(folder, "frames", fps=24.0) == reader.meta
    with pytest.raises(VideoDecodeError, match="seq: no audio stream"):
        reader.get_audio(0, 0.1, 16000)

    (folder / "00002.jpg").write_bytes(b"broken")
    with pytest.raises(VideoDecodeError, match="00002.jpg"):
        VideoReader(folder, backend="frames").get_frames([2])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="empty: no frame images"):
        VideoReader(tmp_path / "empty", backend="frames")


# -------------------------------------------------------------------------------------------- bad input
def _write_bad(kind: str, directory: Path, sample_clips) -> Path:
    path = directory / f"{kind}.mp4"
    if kind == "truncated":  # the sample clips keep their header (moov) at the end: a cut loses it
        data = sample_clips["bikes"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("path,label\nthis is a manifest, not a video\n")
    elif kind == "audio_only":
        with av.open(str(path), "w") as out:
            stream = out.add_stream("aac", rate=16000, layout="mono")
            tone = np.sin(np.arange(8000) / 10).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
    return path


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "text", "audio_only", "missing"])
def test_bad_files_raise_a_clear_error_naming_the_path(tmp_path, sample_clips, kind, backend):
    path = tmp_path / "missing.mp4" if kind == "missing" else _write_bad(kind, tmp_path, sample_clips)
    with pytest.raises(VideoDecodeError) as err:
        VideoReader(path, backend=backend).get_frames([0])
    assert str(path) in str(err.value) and err.value.path == str(path)
    with pytest.raises(VideoDecodeError):
        probe(path, backend)


def test_a_file_cut_short_after_its_header_fails_only_past_the_cut(tmp_path, sample_clips):
    whole = tmp_path / "whole.mp4"
    remux_faststart(sample_clips["bikes"], whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    reader = VideoReader(cut)
    assert reader.num_frames == 250  # the header still promises the whole video
    assert reader.get_frames([0, 100]).shape == (2, 272, 640, 3)
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4: .*(ends after|decoding failed)"):
        reader.get_frames([249])
    with pytest.raises(VideoDecodeError, match=r"cut\.mp4"):
        VideoReader(cut, backend="decord").get_frames([249])


def test_unknown_backend_and_a_directory_read_as_a_file(tmp_path, sample_clips):
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        VideoReader(sample_clips["bikes"], backend="opencv")
    with pytest.raises(VideoDecodeError, match="is a directory"):
        VideoReader(tmp_path, backend="av")
