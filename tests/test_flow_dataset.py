"""The flow stream: dataset.modality=flow, flow augmentation, RGB/flow alignment, training and evaluating on flow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_flow import textured_clip
from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.flow import FlowAligned, FlowTransform, flow_entries, for_flow, negate_x
from vidssl.datasets.formats import csv_manifest
from vidssl.datasets.sampling import ClipSampler
from vidssl.datasets.synthetic import write_video
from vidssl.datasets.transforms import ClipTransform, EvalTransform
from vidssl.eval.two_stream import fuse_features
from vidssl.datasets.extract_flow import FlowOptions, extract_flow
from vidssl.datasets.flow import decode_flow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Four 44-frame 64×64 videos (two classes, train and val) and their DIS flow."""
    root = tmp_path_factory.mktemp("flowcorpus")
    (root / "videos").mkdir()
    rows = ["path,label,split"]
    for k, (shift, split) in enumerate([((2, 0), "train"), ((0, 2), "train"), ((2, 0), "val"), ((0, 2), "val")]):
        write_video(root / f"videos/v{k}.mp4", textured_clip(44, shift, seed=k), None, fps=8)
        rows.append(f"videos/v{k}.mp4,{k % 2},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    flow = root.parent / (root.name + "_flow")
    entries = csv_manifest(root, manifest="manifest.csv", split=None)
    report = extract_flow(root, entries, flow, FlowOptions(method="dis"), workers=1, progress=False)
    assert not report.bad
    return root, flow


class Recorder:
    """A sampler that remembers what it was asked and what it drew."""

    def __init__(self, sampler) -> None:
        self.sampler, self.calls = sampler, []

    @property
    def span(self) -> int:
        return self.sampler.span

    def __call__(self, num_frames, generator):
        indices = self.sampler(num_frames, generator)
        self.calls.append((num_frames, indices))
        return indices


def test_modality_flow_points_every_loader_at_the_flow_folders(corpus):
    root, flow = corpus
    rgb = csv_manifest(root, manifest="manifest.csv", split="train")
    entries = csv_manifest(root, manifest="manifest.csv", split="train", modality="flow", flow_root=flow)
    assert [(e.label, e.split) for e in entries] == [(e.label, e.split) for e in rgb]
    assert [Path(e.path) for e in entries] == [flow.resolve() / "videos" / f"v{k}" for k in (0, 1)]
    with pytest.raises(ValueError, match="flow_root"):
        csv_manifest(root, manifest="manifest.csv", modality="flow")
    with pytest.raises(ValueError, match="modality"):
        csv_manifest(root, manifest="manifest.csv", modality="depth")


def test_unfinished_flow_is_an_error_that_says_what_to_run(corpus, tmp_path):
    root, flow = corpus
    entries = csv_manifest(root, manifest="manifest.csv", split=None)
    with pytest.raises(FileNotFoundError, match="4 of 4 videos .* tools/extract_flow.py"):
        flow_entries(entries, tmp_path)  # nothing extracted there
    partial = tmp_path / "partial"
    for k in range(4):
        (partial / f"videos/v{k}").mkdir(parents=True)
        if k:
            (partial / f"videos/v{k}/.flow.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="1 of 4 videos"):  # v0 has frames but no marker
        csv_manifest(root, manifest="manifest.csv", split=None, modality="flow", flow_root=partial)


def test_a_flip_mirrors_the_motion_and_nothing_changes_the_levels():
    frames = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    frames[..., 0] = 128
    frames[..., 1] = torch.arange(8, dtype=torch.uint8).view(1, 8, 1) * 10  # y varies down the rows
    frames[..., 2] = torch.arange(8, dtype=torch.uint8).view(1, 1, 8) * 30  # x varies along the columns
    g = torch.Generator().manual_seed(0)
    keep = FlowTransform(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, normalize=False)(frames, g)
    flipped = FlowTransform(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0, normalize=False)(frames, g)
    assert keep.shape == (3, 2, 8, 8)
    assert torch.equal((keep * 255).round().to(torch.uint8), frames.permute(3, 0, 1, 2))  # no jitter
    x, x_flipped = (keep[2] * 255).round(), (flipped[2] * 255).round()
    assert torch.equal(x_flipped, 255 - x.flip(-1))  # mirrored and negated
    assert torch.equal(flipped[1], keep[1].flip(-1))  # y only mirrored
    assert torch.equal(negate_x(negate_x(frames.permute(0, 3, 1, 2))), frames.permute(0, 3, 1, 2))
    official = FlowTransform(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0, negate_x=False, normalize=False)
    assert torch.equal(official(frames, g)[2], keep[2].flip(-1))


def test_rgb_transforms_get_their_flow_counterpart():
    rgb = ClipTransform(size=48, scale=(0.5, 1.0), flip=0.3)
    flow = for_flow(rgb)
    assert isinstance(flow, FlowTransform)
    assert (flow.size, flow.scale, flow.ratio, flow.flip, flow.normalize) == (48, (0.5, 1.0), rgb.ratio, 0.3, True)
    assert flow.color_jitter == 0 and flow.hue == 0 and flow.grayscale == 0
    assert for_flow(EvalTransform(size=32)) == EvalTransform(size=32)
    with pytest.raises(ValueError, match="colour"):
        FlowTransform(color_jitter=0.4)
    with pytest.raises(TypeError, match="FlowTransform"):
        for_flow(lambda frames, g: frames)


def test_rgb_and_flow_clips_of_a_video_are_aligned_frame_for_frame(corpus):
    root, flow = corpus
    rgb_sampler, flow_sampler = Recorder(ClipSampler(8, stride=3)), Recorder(ClipSampler(8, stride=3))
    common = dict(transform=ClipTransform(size=32), seed=5)
    rgb = VideoDataset(root=root, entries=csv_manifest(root, manifest="manifest.csv", split=None),
                       sampler=FlowAligned(rgb_sampler), **common)
    flows = VideoDataset(root=root, entries=csv_manifest(root, manifest="manifest.csv", split=None, modality="flow",
                                                         flow_root=flow),
                         sampler=flow_sampler, modality="flow", **common)
    assert isinstance(flows.transform, FlowTransform)
    for epoch in (0, 1):
        rgb.set_epoch(epoch)
        flows.set_epoch(epoch)
        for i in range(len(rgb)):
            a, b = rgb[i], flows[i]
            assert a["video"].shape == b["video"].shape == (3, 8, 32, 32)
            assert a["label"] == b["label"]
    assert [c[0] for c in flow_sampler.calls] == [43] * 8  # 44 frames give 43 flow images
    assert rgb_sampler.calls == flow_sampler.calls  # the same draws: RGB frame i with flow i -> i+1
    assert len({tuple(c[1]) for c in flow_sampler.calls}) > 1  # and they are random draws, not all equal


def test_a_flow_clip_carries_the_motion_channels(corpus):
    root, flow = corpus
    entries = csv_manifest(root, manifest="manifest.csv", split="train", modality="flow", flow_root=flow)
    data = VideoDataset(root=root, entries=entries, sampler=ClipSampler(4, random=False),
                        transform=EvalTransform(size=64, normalize=False), modality="flow")
    clip = data[0]["video"]  # video 0 moves by (+2, 0) per frame
    constant, y, x = (decode_flow(clip[c, :, 16:-16, 16:-16] * 255) for c in range(3))
    assert constant.abs().max() < 0.2  # the official constant channel, 128
    assert x.median().item() == pytest.approx(2, abs=0.3) and y.median().item() == pytest.approx(0, abs=0.3)


@pytest.mark.parametrize("task", ["memdpc", "dpc"])
def test_predictive_coding_trains_and_evaluates_on_flow(corpus, tmp_path, task):
    root, flow = corpus
    data = [f"dataset.root={root}", "dataset=csv", "dataset.manifest=manifest.csv", "dataset.modality=flow",
            f"dataset.flow_root={flow}"]
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, str(REPO / "tools/pretrain.py"), f"task={task}", *data, "encoder.base_width=4",
         f"trainer.out_dir={run}", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.num_workers=0",
         "trainer.checkpoint_every=2", "trainer.warmup_steps=0", "trainer.progress=false"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    saved = json.dumps(torch.load(run / "checkpoints/last.pt", weights_only=True)["config"]["dataset"])
    assert '"modality": "flow"' in saved
    evaluate = subprocess.run(
        [sys.executable, str(REPO / "tools/evaluate.py"), "metric=linear", f"checkpoint={run}", *data,
         "num_frames=4", "size=32", f"out={tmp_path / 'eval'}"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 1.0


def test_fused_similarity_is_the_mean_of_the_two_streams_similarities():
    g = torch.Generator().manual_seed(0)
    rgb, flow = torch.randn(5, 7, generator=g), torch.randn(5, 3, generator=g)
    fused = fuse_features(rgb, flow)
    cos = lambda a: torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(a, dim=1).T  # noqa: E731
    assert torch.allclose(fused @ fused.T, (cos(rgb) + cos(flow)) / 2, atol=1e-6)
    shared = flow + 100  # a large common component would drown flow's say in the mean: centring removes it
    centred = fuse_features(rgb, shared, 0.0, shared.mean(0))
    assert torch.allclose(centred @ centred.T, (cos(rgb) + cos(flow - flow.mean(0))) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="samples"):
        fuse_features(rgb, flow[:4])


def test_evaluate_scores_rgb_flow_and_their_fusion(corpus, tmp_path):
    root, flow = corpus
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/evaluate.py"), "metric=linear", "checkpoint=random",
         "flow_checkpoint=random", "encoder=r2d3d_18", "encoder.base_width=4", "dataset=csv", f"dataset.root={root}",
         "dataset.manifest=manifest.csv", f"dataset.flow_root={flow}", "num_frames=4", "size=32",
         f"out={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"rgb/top1", "flow/top1", "R+F/top1"} <= set(metrics)
    assert metrics["flow_checkpoint"] == "random"
