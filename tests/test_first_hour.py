"""The first hour with your own videos: thread defaults, checks before work, work kept, outputs that cannot mix."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidssl.app.outputs import prepare_out
from vidssl.app.threads import choose_threads
from vidssl.configs import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
FRAME_ENCODER = {"_target_": "vidssl.encoders.frame.resnet18_dense", "base_width": 4, "padding_mode": "reflect"}
DATA = {
    "sampler": {"_target_": "vidssl.datasets.sampling.ClipSampler", "num_frames": 3, "stride": 2},
    "transform": {"_target_": "vidssl.datasets.transforms.ClipTransform", "size": 32},
    "views": 1,
}


def _tool(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=environ)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vidssl.datasets.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("first_hour"), num_videos=6, num_classes=3, height=48, width=48,
                          min_frames=16, max_frames=16, davis_train_per_class=0)


def test_thread_rule_is_one_thread_per_core_and_overrides_win() -> None:
    assert choose_threads(cores=2, environ={}).threads == 2
    assert choose_threads(cores=16, environ={}).threads == 16
    env = choose_threads(cores=16, environ={"OMP_NUM_THREADS": "3"})
    assert (env.threads, env.source) == (3, "OMP_NUM_THREADS")
    key = choose_threads(cores=16, requested=5, environ={"OMP_NUM_THREADS": "3"})
    assert (key.threads, key.source) == (5, "threads=") and "threads 5" in key.describe()
    with pytest.raises(ValueError, match="threads=0"):
        choose_threads(requested=0, environ={})


def test_tools_make_idle_openmp_threads_sleep_before_torch_loads() -> None:
    # OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the tools' first import must set it
    probe = ("import sys, os, hydra, omegaconf; import vidssl.app.cli; "
             "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "PASSIVE"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice wins
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "ACTIVE"]

def test_frame_encoder_features_are_its_frames_pooled_over_the_clip() -> None:
    from vidssl.encoders import pool
    from vidssl.eval.clip_features import as_clip_encoder
    from vidssl.run import load_encoder

    frame_encoder = load_encoder("random", FRAME_ENCODER).eval()
    clip_encoder = as_clip_encoder(frame_encoder)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        pooled = pool(clip_encoder(video))
        expected = torch.stack([torch.stack([pool(frame_encoder(video[b:b + 1, :, t]))[0] for t in range(4)]).mean(0)
                                for b in range(2)])
    assert pooled.shape == (2, frame_encoder.out_channels)
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def crw_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CRW-style checkpoint: a width-4 frame encoder (32 output channels) and its task config."""
    from vidssl.run import load_encoder

    encoder = load_encoder("random", FRAME_ENCODER)
    task = {"model": {"_target_": "vidssl.tasks.crw.CRW", "embed_dim": 8}, "data": DATA}
    ckpt = tmp_path_factory.mktemp("crw") / "crw.pt"
    torch.save({"encoder": encoder.state_dict(), "model": {}, "config": {"encoder": FRAME_ENCODER, "task": task}},
               ckpt)
    return ckpt


def test_crw_checkpoint_clusters_with_kmeans(small_root: Path, crw_checkpoint: Path, tmp_path: Path) -> None:
    """A CRW checkpoint (a frame encoder) in pseudo_label.py method=kmeans: pooled over the clip, not a shape error."""
    ckpt = crw_checkpoint
    out = tmp_path / "labels.csv"
    result = _tool("pseudo_label", "method=kmeans", "num_clusters=3", f"checkpoint={ckpt}", "dataset=synthetic",
                   f"dataset.root={small_root}", f"out={out}", "grid_clusters=2", "grid_per_cluster=2",
                   cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "threads 1 (from OMP_NUM_THREADS" in result.stdout.splitlines()[0]
    assert (f"pseudo_label: features checkpoint {ckpt}, encoder ResNet18Dense (32 output channels, reflect "
            "padding), layer pooled output, input 3x32x32") in result.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {r["cluster"] for r in rows} <= {"0", "1", "2"}
    assert "encode clips: 100%" in result.stderr  # progress and ETA while it works


def test_pseudo_label_without_out_is_refused_before_any_work(small_root: Path, tmp_path: Path) -> None:
    # the checkpoint does not exist: a refusal that came after loading it would name it instead
    result = _tool("pseudo_label", "method=kmeans", "num_clusters=3", f"checkpoint={tmp_path / 'absent.pt'}",
                   "dataset=synthetic", f"dataset.root={small_root}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: pseudo_label.py needs out=... (checkpoint=CKPT|random, out=LABELS.csv)"]
    assert list(tmp_path.iterdir()) == []


def _moving_square_mkv(path: Path, frames: int = 40) -> np.ndarray:
    """A Matroska video (its index need not be at the end, so a cut file still opens) and its first mask."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.gop_size = 4  # keyframes often, so the frames before the cut decode
        for t in range(frames):
            image = np.full((48, 64, 3), 40, np.uint8)
            image[12:32, 8 + t % 24:28 + t % 24] = (230, 60, 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:32, 8:28] = 1
    return mask


def test_truncated_video_keeps_the_frames_tracked(tmp_path: Path) -> None:
    from vidssl.eval.features import PixelFeatures
    from vidssl.eval.track import track_video

    mask = _moving_square_mkv(tmp_path / "full.mkv")
    data = (tmp_path / "full.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    result = track_video(tmp_path / "cut.mkv", mask, tmp_path / "out", PixelFeatures(), progress=False)
    written = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert 0 < result["frames"] < 40 and len(written) == result["frames"]
    assert result["truncated"] and f"kept the {result['frames']} frames tracked" in result["truncated"]
    assert (tmp_path / "out" / "overlay.mp4").stat().st_size > 0 and (tmp_path / "out" / "overlay.gif").is_file()


def test_earlier_results_are_refused_or_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "res"
    (out / "masks").mkdir(parents=True)
    for t in range(5):
        (out / "masks" / f"{t:05d}.png").write_bytes(b"stale")
    (out / "overlay.gif").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"out=.*res is not empty \(6 earlier result files.*overwrite=true"):
        prepare_out(out, overwrite=False)
    assert len(list((out / "masks").iterdir())) == 5
    prepare_out(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the user's own file stays
    assert prepare_out(tmp_path / "new", overwrite=False) == tmp_path / "new"


def test_propagate_refuses_a_used_out_before_building_features(tmp_path: Path) -> None:
    (tmp_path / "res" / "masks").mkdir(parents=True)
    (tmp_path / "res" / "masks" / "00000.png").write_bytes(b"stale")
    # features=checkpoint of a file that does not exist: it would fail differently if built first
    result = _tool("propagate", f"video={tmp_path / 'absent.mp4'}", f"mask={tmp_path / 'absent.png'}",
                   f"out={tmp_path / 'res'}", "features=checkpoint", f"checkpoint={tmp_path / 'absent.pt'}",
                   cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: out={tmp_path / 'res'} is not empty")


def test_finetune_drops_a_test_video_shorter_than_its_clip(small_root: Path) -> None:
    """PositionedSampler (metric=finetune's test clips) says "too short" as the dataset understands it."""
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.datasets.formats import csv_manifest
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.eval.finetune import PositionedSampler

    dataset = VideoDataset(root=small_root, entries=csv_manifest(small_root, manifest="manifest.csv", split=None),
                           sampler=PositionedSampler(20, 1, 0.5), transform=EvalTransform(size=32), substitute=False)
    sample = dataset[0]  # 16-frame videos, 20-frame clips: dropped with its reason, not a crash
    assert "needs 20 frames but the video has 16" in sample["error"] and dataset.failures


def test_clips_longer_than_every_video_stop_in_one_line_before_the_first_step(small_root: Path,
                                                                             tmp_path: Path) -> None:
    result = _tool("pretrain", "task=dpc_paper", "dataset=synthetic", f"dataset.root={small_root}",
                   f"trainer.out_dir={tmp_path / 'run'}", "trainer.max_steps=2", cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: a clip of BlockSampler(num_seq=8, seq_len=5, stride=3) needs 118 frames, but "
                           "the 3 videos checked") and "have 16;" in last and "task.data.sampler.stride (now 3)" in last
    assert "step 1" not in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()  # a refused start leaves no run folder


def test_a_misspelled_key_is_one_line_with_the_near_names_and_no_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = _tool("pretrain", "task=dpc", "dataset.root=/nonexistent", "trainer.max_step=3",
                   f"trainer.out_dir={run}", cwd=tmp_path)
    assert result.returncode == 2 and not run.exists()
    assert result.stderr.strip().splitlines() == [
        "error: trainer.max_step: no such key in pretrain.yaml (did you mean trainer.max_steps, trainer.warmup_steps?)"]


def test_a_wrong_group_option_names_the_near_options() -> None:
    from vidssl.app.errors import describe_override_error

    err = Exception("In 'pretrain': Could not find 'task/dpcc'\n\nAvailable options in 'task':\n\tcpc\n\tdpc")
    assert describe_override_error("pretrain", ["task=dpcc"], err) == (
        "error: task=dpcc: no vidssl/configs/task/dpcc.yaml (did you mean dpc?)")


def test_a_tool_error_is_one_line_and_the_traceback_on_request(small_root: Path, tmp_path: Path) -> None:
    args = ("metric=retrieval", "checkpoint=random", "encoder=r3d_18", "dataset=synthetic",
            f"dataset.root={small_root}", f"out={tmp_path / 'ev'}")
    result = _tool("evaluate", *args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: retrieval: k=20 exceeds the gallery size 3 (the train split's clips); pass smaller ks=[...] "
        "(traceback: rerun with HYDRA_FULL_ERROR=1)"]


def test_a_warmup_longer_than_the_run_is_scaled_to_a_tenth() -> None:
    from vidssl.train.trainer import cosine_schedule
    from vidssl.train.warmup import fit_warmup

    assert fit_warmup(10, 300) == (10, None) and fit_warmup(0, 5) == (0, None)
    warmup, note = fit_warmup(50, 30)
    assert warmup == 3 and "warm-up scaled to 3" in note and "trainer.warmup_steps" in note
    assert fit_warmup(50, 6)[0] == 1
    factors = cosine_schedule(max_steps=30, warmup_steps=warmup)
    assert max(factors) == 1.0 and factors[-1] < 0.01  # the rate now decays within the run


def test_the_random_baseline_of_a_named_checkpoint_is_the_same_network(tmp_path: Path) -> None:
    from vidssl.eval.features import build_feature_fn
    from vidssl.run import load_encoder

    trained = load_encoder("random", FRAME_ENCODER)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # "trained": not the random init
    ckpt = tmp_path / "crw.pt"
    task = {"model": {"_target_": "vidssl.tasks.crw.CRW", "embed_dim": 8}, "data": DATA}
    torch.save({"encoder": trained.state_dict(), "model": {}, "config": {"encoder": FRAME_ENCODER, "task": task}}, ckpt)
    twin = load_encoder(f"random:{ckpt}")
    assert twin.out_channels == trained.out_channels == 32 and twin.padding_mode == "reflect"
    assert twin.state_dict().keys() == trained.state_dict().keys()
    assert not torch.equal(twin.conv1.weight, trained.conv1.weight)
    torch.testing.assert_close(twin.conv1.weight, load_encoder("random", FRAME_ENCODER).conv1.weight)  # fixed seed
    # propagate.py features=random checkpoint=CKPT: the width-4 twin, not encoder='s width-64 default
    default_encoder = {"_target_": "vidssl.encoders.frame.resnet18_dense"}
    feature_fn = build_feature_fn("random", encoder_cfg=default_encoder, checkpoint=str(ckpt), layer="output")
    assert feature_fn(torch.zeros(32, 32, 3, dtype=torch.uint8)).shape[0] == 32


def test_crw_checkpoint_in_retrieval_records_what_was_used(small_root: Path, crw_checkpoint: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib

    from hydra import compose, initialize_config_dir

    tool = importlib.import_module("vidssl.app.evaluate")  # what tools/evaluate.py runs
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=["metric=retrieval", f"checkpoint={crw_checkpoint}", "dataset=synthetic",
                                             f"dataset.root={small_root}", "ks=[1]", "size=32", "num_frames=3",
                                             f"out={tmp_path / 'ev'}"])
    metrics, _, _ = tool.evaluate_features(cfg)
    assert {k: metrics[k] for k in ("encoder", "width", "padding", "input_size")} == {
        "encoder": "ResNet18Dense", "width": 32, "padding": "reflect", "input_size": "3x32x32 (stride 2)"}
    assert 0.0 <= metrics["R@1"] <= 1.0
    assert "features: 100%" in capsys.readouterr().err  # a progress bar per split


def test_bad_files_are_summed_up_by_their_real_reason() -> None:
    from vidssl.datasets.dataset import NO_AUDIO
    from vidssl.train.bad_files import summarize_bad_files

    reasons = [f"VideoDecodeError: videos/a.mp4: {NO_AUDIO}"] * 9 + [
        "ClipTooShortError: a clip needs 20 frames but the video has 16",
        "12 frames, but a clip spans 20",  # set aside up front (loader.index)
        "VideoDecodeError: videos/b.mp4: cannot open: Invalid data"]
    line = summarize_bad_files(reasons, total=14)
    assert line.startswith("12 of 14 files set aside (9 without sound, 2 too short, 1 unreadable)")
    assert "loader.require_audio=false" in line and "task=sela" in line
    assert "require_audio" not in summarize_bad_files(reasons[9:], total=14) and summarize_bad_files([], 3) is None


def test_clusters_report_class_names_a_confusion_matrix_and_missing_clips(tmp_path: Path) -> None:
    import importlib

    from hydra import compose, initialize_config_dir
    from PIL import Image

    (tmp_path / "manifest.csv").write_text("path,label\na.mp4,cat\nb.mp4,cat\nc.mp4,dog\nd.mp4,dog\ne.mp4,eel\n"
                                           "f.mp4,eel\n")
    (tmp_path / "labels.csv").write_text("path,cluster,confidence\na.mp4,1,1\nb.mp4,1,1\nc.mp4,0,1\nd.mp4,1,1\n"
                                         "e.mp4,2,1\n")  # f.mp4 was never labelled
    tool = importlib.import_module("vidssl.app.evaluate")  # what tools/evaluate.py runs
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=["metric=clusters", f"labels={tmp_path / 'labels.csv'}",
                                             f"manifest={tmp_path / 'manifest.csv'}", f"out={tmp_path / 'ev'}"])
    metrics, table, _ = tool.evaluate_clusters(cfg)
    assert metrics["missing_from_labels"] == 1 and "f.mp4" in table
    assert "cat" in table and "dog" in table  # names, not only indices
    rows = list(csv.reader((tmp_path / "ev" / "confusion.csv").open()))
    assert rows == [["cluster", "cat", "dog", "eel"], ["0", "0", "1", "0"], ["1", "2", "1", "0"], ["2", "0", "0", "1"]]
    with Image.open(tmp_path / "ev" / "confusion.png") as image:
        assert image.size[0] > 200 and image.size[1] > 200


def test_the_confusion_picture_orders_clusters_by_their_majority_class() -> None:
    from vidssl.eval.cluster_report import majority_order

    counts = np.array([[0, 0, 5], [4, 1, 0], [0, 6, 0], [9, 0, 0], [0, 2, 1]])  # clusters 0..4 × classes a, b, c
    # a: clusters 3 (9), 1 (4); b: 2 (6), 4 (2); c: 0 — the diagonal a clustering that follows the classes makes
    assert majority_order(counts) == [3, 1, 2, 4, 0]


def test_tracking_starts_at_the_frame_the_mask_is_drawn_on(tmp_path: Path) -> None:
    from vidssl.datasets.formats import read_mask
    from vidssl.eval.features import PixelFeatures
    from vidssl.eval.track import track_video

    _moving_square_mkv(tmp_path / "full.mkv", frames=12)
    mask = np.zeros((48, 64), np.uint8)
    mask[12:32, 8 + 5:28 + 5] = 1  # the square where it is at frame 5
    result = track_video(tmp_path / "full.mkv", mask, tmp_path / "out", PixelFeatures(), start_frame=5,
                         progress=False)
    assert result["frames"] == 7 and not result["truncated"]
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / "00000.png"), mask)
    with pytest.raises(ValueError, match="start_frame=12: .* has frames 0..11"):
        track_video(tmp_path / "full.mkv", mask, tmp_path / "o2", PixelFeatures(), start_frame=12, progress=False)


def test_a_soft_mask_is_binarised_on_request_or_refused_naming_threshold(tmp_path: Path) -> None:
    from PIL import Image, ImageFilter

    from vidssl.eval.track import read_first_mask

    hard = np.zeros((48, 64), np.uint8)
    hard[12:32, 8:28] = 255
    Image.fromarray(hard).filter(ImageFilter.GaussianBlur(2)).save(tmp_path / "soft.png")  # anti-aliased edges
    with pytest.raises(ValueError, match="grey levels.*threshold=128"):
        read_first_mask(tmp_path / "soft.png")
    binary = read_first_mask(tmp_path / "soft.png", threshold=128)
    assert set(np.unique(binary)) == {0, 1} and abs(int(binary.sum()) - 400) < 40
    Image.fromarray(hard).save(tmp_path / "soft.jpg", quality=70)  # JPEG ringing
    assert abs(int(read_first_mask(tmp_path / "soft.jpg", threshold=128).sum()) - 400) < 40


def test_help_lists_each_key_with_its_comment_and_the_groups_used() -> None:
    from vidssl.app.errors import config_help

    text = config_help("pseudo_label")
    assert "  num_clusters: null             # K, for method=kmeans|sinkhorn" in text.splitlines()
    assert any(line.startswith("  task=…  (cpc, crw, dpc,") for line in text.splitlines())
    assert "hydra" not in text.split("Hydra's own flags")[0]  # Hydra's own settings are not the tool's keys
    pretrain = config_help("pretrain")
    assert any(line.startswith("  trainer.max_steps: 1000") for line in pretrain.splitlines())
    assert any(line.startswith("  trainer.warmup_steps: 50") for line in pretrain.splitlines())


def test_propagate_checks_the_mask_before_loading_any_weights(sample_clips, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")  # carphone is 176×144
    result = _tool("propagate", f"video={sample_clips['carphone']}", f"mask={tmp_path / 'small.png'}",
                   f"out={tmp_path / 'res'}", "features=checkpoint", f"checkpoint={tmp_path / 'absent.pt'}",
                   cwd=tmp_path)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: mask {tmp_path / 'small.png'} is 10×10 but the frames of") and "absent.pt" not in line


def test_overlays_outline_each_object_and_name_it_in_a_legend() -> None:
    from vidssl.datasets.formats import DAVIS_PALETTE
    from vidssl.eval.overlay import outlined_overlay

    labels = np.zeros((60, 80), np.int64)
    labels[20:40, 30:50] = 1
    labels[45:55, 60:75] = 2
    out = outlined_overlay(np.full((60, 80, 3), 100, np.uint8), labels, 2)
    assert (out[20, 40] == DAVIS_PALETTE[1]).all() and (out[45, 65] == DAVIS_PALETTE[2]).all()  # outlines
    assert not (out[30, 40] == DAVIS_PALETTE[1]).all()  # inside: blended, not painted over
    assert (out[5, 5] == DAVIS_PALETTE[1]).all() and (out[17, 5] == DAVIS_PALETTE[2]).all()  # legend swatches
    assert (out[0, 20] == 40).all() and (out[0, 30] == 100).all()  # the legend's darkened backing, and no further


def test_overlays_equal_the_whole_frame_reference() -> None:
    """The blend of the objects' pixels only, and the outline eroded in each object's box, are the whole-frame forms."""
    from scipy.ndimage import binary_erosion

    from vidssl.datasets.formats import DAVIS_PALETTE
    from vidssl.eval.overlay import outlined_overlay
    from vidssl.viz import overlay_masks

    rng = np.random.default_rng(0)
    palette = np.asarray(DAVIS_PALETTE, np.float64)
    for trial in range(40):
        height, width = rng.integers(5, 40, 2)
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        num = int(rng.integers(0, 5))
        labels = np.zeros((height, width), np.int64)
        for k in range(1, num + 1):  # rectangles, some at the border, some overlapping, some off
            y, x = rng.integers(0, height), rng.integers(0, width)
            labels[y:y + rng.integers(1, 15), x:x + rng.integers(1, 15)] = k
        if trial % 4 == 0:
            labels = rng.integers(0, num + 1, (height, width))  # scattered pixels
        blended = np.where(labels[..., None] > 0, 0.5 * frame + 0.5 * palette[labels], frame)
        reference = (blended + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(overlay_masks(frame, labels), reference)
        for k in range(1, num + 1):
            mask = labels == k
            reference[mask & ~binary_erosion(mask, border_value=0)] = DAVIS_PALETTE[k]
        np.testing.assert_array_equal(outlined_overlay(frame, labels, num, legend=False), reference)


def test_the_thread_count_does_not_follow_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from vidssl.app import threads as rule

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(rule, "available_cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    before = torch.get_num_threads()
    try:
        steady = rule.set_cpu_threads()  # a resumed run gets the count of the run it continues
        assert steady.threads == 4 == torch.get_num_threads() and "one per core" in steady.describe()
    finally:
        torch.set_num_threads(before)

def test_mostly_silent_videos_are_said_once_before_training(small_root: Path, tmp_path: Path) -> None:
    from vidssl.datasets.clip_fit import silent_warning
    from vidssl.viz import save_mp4

    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        save_mp4(tmp_path / f"{name}.mp4", [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)])
    line = silent_warning(tmp_path, ["a.mp4", "b.mp4", "c.mp4", "broken.mp4"])
    assert line.startswith("3 of the first 3 videos") and "loader.require_audio=false" in line and "task=sela" in line
    with_sound = sorted(p.relative_to(small_root).as_posix() for p in (small_root / "videos").glob("*.mp4"))
    assert with_sound and silent_warning(small_root, with_sound) is None  # the synthetic clips have sound


def test_pretrain_takes_out_like_the_other_tools() -> None:
    import importlib

    tool = importlib.import_module("vidssl.app.pretrain")  # what tools/pretrain.py runs
    assert tool.out_alias(["task=dpc", "out=RUN"]) == ["task=dpc", "trainer.out_dir=RUN"]
    assert tool.out_alias(["trainer.out_dir=RUN"]) == ["trainer.out_dir=RUN"]
    with pytest.raises(SystemExit, match="once"):
        tool.out_alias(["out=A", "trainer.out_dir=B"])


def test_grid_thumbnails_carry_file_name_and_confidence() -> None:
    from vidssl.eval.pseudo_label import CAPTION, captioned

    tile = captioned(np.zeros((64, 64, 3), np.uint8), "v012", "0.87")
    assert tile.shape == (64 + CAPTION, 64, 3) and (tile[:64] == 0).all()
    strip = tile[64:]
    assert (strip < 128).any() and (strip[:, :, 0] == strip[:, :, 1]).all()  # black text on white
    assert (captioned(np.zeros((64, 64, 3), np.uint8), "", "")[64:] == 255).all()  # the text is what darkens it


def test_preview_sheets_label_rows_frames_and_the_logmel(small_root: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from PIL import Image

    from vidssl.app.preview_sheets import labelled_sheets
    from vidssl.datasets.dataset import VideoDataset

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("preview", overrides=["task=selavi", f"dataset.root={small_root}", f"out={tmp_path}",
                                            "task.data.transform.size=32"])
    dataset = VideoDataset(root=small_root, entries=instantiate(cfg.dataset),
                           **instantiate(cfg.task.data, _convert_="all"), require_audio=False)
    written = labelled_sheets(dataset, tmp_path / "pv", num_clips=2)
    assert [p.name for p in written] == ["views.png", "logmel.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 150


def _load_tool(name: str):
    """The tool's module (``vidssl.app.<name>``), to call one of its steps in this process."""
    import importlib

    return importlib.import_module(f"vidssl.app.{name}")


def test_davis_layouts_get_outlined_overlays_beside_their_masks(small_root: Path, tmp_path: Path) -> None:
    from PIL import Image
    from scipy.ndimage import binary_erosion

    from vidssl.datasets.decode import VideoReader
    from vidssl.datasets.formats import DAVIS_PALETTE, davis, read_mask
    from vidssl.eval.propagate import read_frame
    from vidssl.viz import overlay_masks

    def first_objects(seq) -> int:
        return int(read_mask(seq.annotations[0]).max())

    out = tmp_path / "res"
    result = _tool("propagate", f"davis_root={small_root / 'davis'}", f"out={out}", "features=pixels", "split=val",
                   cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})  # overlay=true is the default
    assert result.returncode == 0, result.stderr[-3000:]
    sequences = davis(small_root / "davis", split="val")
    said = f"wrote {len(sequences)} sequences to {out} (masks, overlay.mp4 and overlay.gif per sequence)"
    assert said in result.stdout
    for seq in sequences:
        folder = out / seq.name
        height, width = read_mask(seq.annotations[0]).shape
        reader = VideoReader(folder / "overlay.mp4")
        assert reader.size == (height, width) and reader.num_frames == len(seq.frames)
        reader.close()
        checked = 0
        with Image.open(folder / "overlay.gif") as gif:
            assert gif.size == (width, height) and gif.n_frames == len(seq.frames)
            for t in (0, len(seq.frames) - 1):  # the annotation, and the last frame propagated
                gif.seek(t)
                shown = np.asarray(gif.convert("RGB")).astype(int)
                labels = read_mask(folder / f"{seq.frames[t].stem}.png")
                legend = np.zeros_like(labels, bool)
                legend[: 2 + 12 * int(first_objects(seq)), :24] = True  # swatches and numbers, top left
                blended = overlay_masks(read_frame(seq.frames[t]).numpy(), labels).astype(int)  # no outline
                for k in range(1, int(labels.max()) + 1):
                    mask = labels == k
                    edge = mask & ~binary_erosion(mask, border_value=0) & ~legend
                    if not edge.any():  # an object lost by then, or under the legend
                        continue
                    # the outline is the object's full palette colour (up to the GIF's 256-colour quantisation),
                    # much nearer to it than the colour blended with the frame that is there without an outline
                    off = np.abs(shown - DAVIS_PALETTE[k]).max(axis=-1)[edge]
                    off_blended = np.abs(blended - DAVIS_PALETTE[k]).max(axis=-1)[edge]
                    assert (off <= 24).mean() > 0.9, (seq.name, t, k, off)
                    assert off.mean() < off_blended.mean() - 20, (seq.name, t, k, off.mean(), off_blended.mean())
                    checked += 1
        assert checked, seq.name
    (out / "notes.txt").write_text("mine")
    prepare_out(out, overwrite=True)  # overwrite=true: the overlays go with the masks
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def _clip_level_cfg(root: Path, out: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("evaluate", overrides=["checkpoint=random", "encoder=r2d3d_18", "encoder.base_width=4",
                                              "dataset=synthetic", f"dataset.root={root}", "num_frames=8", "stride=2",
                                              "size=32", "batch_size=2", f"out={out}", *overrides])


def _said_before(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, module, name: str) -> list[str]:
    """Wrap ``module.name``: the standard output printed before its first call is appended to the list returned."""
    seen: list[str] = []
    work = getattr(module, name)

    def first_work(*args, **kwargs):
        if not seen:
            text = capsys.readouterr().out
            print(text, end="")  # keep it for later reads
            seen.append(text)
        return work(*args, **kwargs)

    monkeypatch.setattr(module, name, first_work)
    return seen


def test_finetune_and_attentive_probe_say_what_they_use_before_working(
        small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import vidssl.eval.attentive_probe as probe_module
    import vidssl.eval.finetune as finetune_module

    tool = _load_tool("evaluate")
    facts = {"feature_source": "checkpoint random", "encoder": "R2D3D", "width": 16, "padding": None,
             "input_size": "8x32x32 (stride 2)"}
    before = _said_before(monkeypatch, capsys, finetune_module, "finetune")
    cfg = _clip_level_cfg(small_root, tmp_path / "ft", "metric=finetune", "num_seq=2", "finetune.steps=1",
                          "finetune.test_clips=1")
    metrics, table, _ = tool.evaluate_finetune(cfg)
    line = ("evaluate: features checkpoint random, encoder R2D3D (16 output channels), layer context (ConvGRU over 2 "
            "blocks), all fine-tuned, input 8x32x32 (stride 2)")
    assert before and line in before[0].splitlines()  # said before the first step
    assert {k: metrics[k] for k in facts} == facts and metrics["layer"].startswith("context (ConvGRU over 2 blocks)")
    assert "R2D3D" in table

    before = _said_before(monkeypatch, capsys, probe_module, "extract_views")
    # train_split=null: all 6 clips (2 a class), so that the clean figure has a held-out clip of each class
    cfg = _clip_level_cfg(small_root, tmp_path / "ap", "metric=attentive_probe", "train_split=null",
                          "probe.segments=1", "probe.views=1", "probe.epochs=1", "probe.lrs=[0.001]",
                          "probe.wds=[0.01]", "probe.num_heads=1", "probe.depth=1", "probe.batch_size=4")
    metrics, _, _ = tool.evaluate_attentive_probe(cfg)
    line = ("evaluate: features checkpoint random, encoder R2D3D (16 output channels), layer output map as tokens, "
            "frozen, input 8x32x32 (stride 2), 1 segments x 1 views")
    assert before and line in before[0].splitlines()  # said before any token is extracted
    assert {k: metrics[k] for k in facts} == {**facts, "input_size": "8x32x32 (stride 2), 1 segments x 1 views"}


def test_the_demo_previews_with_the_labelled_sheets(synthetic_root: Path, tmp_path: Path) -> None:
    import inspect

    from PIL import Image

    import vidssl.app.preview as bare
    from vidssl import viz
    from vidssl.app import demo

    written = demo.step_preview(synthetic_root, tmp_path)  # the demo's own corpus: clips of 31 frames
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "preview/synthetic/views.png", "preview/synthetic/logmel.png",
        "preview/bigbuckbunny/views.png", "preview/bigbuckbunny/logmel.png"]
    # two views of 4 synthetic clips and of bigbuckbunny: 8 and 2 rows × 8 frames (1.3 in a frame + 1.5 in of
    # labels; 1.4 in a row + 0.4 in of titles; at 100 dpi); a log-mel panel per clip (6 × 1.8 in + 0.4 in)
    sizes = [Image.open(p).size for p in written]
    assert sizes == [(1190, 1160), (600, 760), (1190, 320), (600, 220)], sizes
    # the demo's own drawing is gone: one code path for the sheets
    assert not hasattr(bare, "preview_dataset")
    source = inspect.getsource(demo)
    assert "labelled_sheets" in source and "contact_sheet" not in source and "spectrogram_image" not in source
    assert not hasattr(viz, "contact_sheet") and not hasattr(viz, "spectrogram_image")


def test_attentive_probe_without_a_clip_to_hold_out_is_refused_before_decoding(
        small_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vidssl.eval.attentive_probe as probe_module

    def no_extraction(*args, **kwargs):
        raise AssertionError("views were extracted before the refusal")

    monkeypatch.setattr(probe_module, "extract_views", no_extraction)
    cfg = _clip_level_cfg(small_root, tmp_path / "ap", "metric=attentive_probe")  # the train split: 1 clip a class
    with pytest.raises(ValueError, match="no class has two training clips"):
        _load_tool("evaluate").evaluate_attentive_probe(cfg)
