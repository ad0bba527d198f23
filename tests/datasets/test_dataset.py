from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidssl.datasets.dataset import BadSampleError, VideoDataset
from vidssl.datasets.formats import VideoEntry
from vidssl.datasets.sampling import BlockSampler, ClipSampler
from vidssl.datasets.transforms import ClipTransform, LogMel


def write_video(path: Path, frames: int = 24, size=(48, 64), fps: int = 12, audio: bool = True, seed: int = 0):
    """A tiny real H.264 (+AAC) file: moving noise, and a tone."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[0], size[1] * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = size[1], size[0], "yuv420p"
        a = c.add_stream("aac", rate=16000) if audio else None
        for t in range(frames):
            img = np.ascontiguousarray(base[:, t : t + size[1]])
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            n = int(16000 * frames / fps)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = wave[None, start : start + 1024]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                frame.sample_rate = 16000
                for p in a.encode(frame):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for i in range(3):
        write_video(root / f"good{i}.mp4", seed=i)
    write_video(root / "silent.mp4", audio=False)
    write_video(root / "short.mp4", frames=4)
    good = (root / "good0.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    return root


def make(root, names, **kw) -> VideoDataset:
    kw.setdefault("sampler", ClipSampler(num_frames=8, stride=2))
    kw.setdefault("transform", ClipTransform(size=32))
    return VideoDataset(root=root, entries=[VideoEntry(n, label=i) for i, n in enumerate(names)], **kw)


def test_sample_dict_and_determinism(root):
    ds = make(root, ["good0.mp4", "good1.mp4"], views=2)
    s = ds[1]
    assert s["video"].shape == (3, 8, 32, 32) and s["video2"].shape == (3, 8, 32, 32)
    assert s["index"] == 1 and s["path"] == "good1.mp4" and s["label"] == 1 and s["skipped"] == 0
    assert not torch.equal(s["video"], s["video2"])
    assert torch.equal(ds[1]["video"], s["video"])  # same (seed, epoch, index) → same sample
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["video"], s["video"])


def test_block_layout_and_audio(root):
    ds = make(root, ["good0.mp4"], sampler=BlockSampler(num_seq=3, seq_len=2, stride=2), audio=LogMel(n_mels=32))
    s = ds[0]
    assert s["video"].shape == (3, 6, 32, 32)
    # 6 frames at stride 2 span 11 frames = 11/12 s of audio at 10 ms hops
    assert s["audio"].shape[:2] == (1, 32) and abs(s["audio"].shape[2] - 92) <= 1
    assert s["has_audio"] is True and torch.isfinite(s["audio"]).all()


@pytest.mark.parametrize("bad", ["truncated.mp4", "random.mp4", "empty.mp4", "text.mp4", "short.mp4"])
def test_bad_file_is_skipped_and_counted(root, bad):
    ds = make(root, [bad, "good0.mp4"], sampler=ClipSampler(num_frames=8, stride=2))
    s = ds[0]
    assert s["path"] == "good0.mp4" and s["skipped"] >= 1
    assert list(ds.failures) == [bad] and ds.failures[bad]  # the reason is kept
    ds[0]  # a known-bad file is not decoded again nor counted twice
    assert len(ds.failures) == 1


def test_missing_audio_where_required(root):
    ds = make(root, ["silent.mp4", "good0.mp4"], audio=LogMel(n_mels=16))
    assert ds[0]["path"] == "good0.mp4" and "silent.mp4" in ds.failures
    lenient = make(root, ["silent.mp4"], audio=LogMel(n_mels=16), require_audio=False)
    s = lenient[0]
    assert s["path"] == "silent.mp4" and s["has_audio"] is False and s["audio"].shape[1] == 16


def test_all_bad_stops_after_bounded_failures(root):
    ds = make(root, ["random.mp4", "empty.mp4", "text.mp4"], max_failures=10)
    with pytest.raises(BadSampleError, match="10 bad videos in a row"):
        ds[0]


def test_missing_files_fail_at_construction(root):
    with pytest.raises(FileNotFoundError, match=r"2 of 3 videos.*nope1\.mp4"):
        make(root, ["good0.mp4", "nope1.mp4", "nope2.mp4"])


def test_workers_give_the_same_samples(root):
    ds = make(root, ["good0.mp4", "good1.mp4", "good2.mp4"])
    serial = [ds[i]["video"] for i in range(3)]
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 8, 32, 32)
    assert all(torch.equal(batch["video"][i], serial[i]) for i in range(3))


def test_index_sets_bad_and_short_files_aside_up_front(root, tmp_path):
    names = ["good0.mp4", "random.mp4", "short.mp4", "good1.mp4"]
    ds = make(root, names, index=tmp_path / "train.index.json")
    assert set(ds.failures) == {"random.mp4", "short.mp4"} and "frames" in ds.failures["short.mp4"]
    assert (tmp_path / "train.index.json").exists()
    assert ds[1]["path"] in {"good0.mp4", "good1.mp4"}  # a set-aside file is never decoded
    again = make(root, names, index=tmp_path / "train.index.json")  # reused from the cache
    assert again.failures == ds.failures


def test_the_entries_decide_the_modality(tmp_path):
    from vidssl.datasets.flow import FlowTransform

    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "flow").mkdir()
    common = dict(root=tmp_path, sampler=ClipSampler(num_frames=2), transform=ClipTransform(size=16))
    assert VideoDataset(entries=[VideoEntry("v.mp4")], **common).modality == "rgb"
    flows = VideoDataset(entries=[VideoEntry("flow", modality="flow")], **common)
    assert flows.modality == "flow" and isinstance(flows.transform, FlowTransform)  # no colour jitter
    with pytest.raises(ValueError, match="dataset.modality=flow"):
        VideoDataset(entries=[VideoEntry("v.mp4")], modality="flow", **common)
    with pytest.raises(ValueError, match="not one modality"):
        VideoDataset(entries=[VideoEntry("v.mp4"), VideoEntry("flow", modality="flow")], **common)
