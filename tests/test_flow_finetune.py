"""Two-stream fine-tuning (R+F): each stream's network fine-tuned on its own, softmax averaged per video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from test_flow_dataset import corpus  # noqa: F401  (the module-scoped flow corpus fixture)
from tiny_encoders import TinyVideoEncoder
from vidssl.eval.finetune import ContextClassifier, context_readout
from vidssl.eval.two_stream import finetune_two_stream

REPO = Path(__file__).resolve().parents[1]


class _Clips(Dataset):
    """Samples shaped like `VideoDataset`'s; index `bad` is a file the dataset cannot read."""

    def __init__(self, videos: torch.Tensor, labels: list[int], bad: int | None = None) -> None:
        self.videos, self.labels, self.bad = videos, labels, bad

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        if i == self.bad:
            return {"index": i, "path": f"v{i}", "label": self.labels[i], "error": "VideoDecodeError: truncated"}
        return {"video": self.videos[i], "label": self.labels[i], "index": i, "path": f"v{i}"}


def _videos(n: int, seed: int, shown: int) -> tuple[torch.Tensor, list[int]]:
    """n clips of 3 classes in which only class `shown` is visible (it brightens channel `shown`): a stream
    that tells that class from the other two and cannot tell those two apart."""
    g = torch.Generator().manual_seed(seed)
    labels = [i % 3 for i in range(n)]
    videos = torch.randn(n, 3, 4, 8, 8, generator=g)
    for i, label in enumerate(labels):
        if label == shown:
            videos[i, shown] += 3.0
    return videos, labels


def _model() -> ContextClassifier:
    return ContextClassifier(context_readout(TinyVideoEncoder(), 2), num_classes=3)


@torch.no_grad()
def _softmax(model: ContextClassifier, videos: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.eval()(videos), dim=1)


def test_r_plus_f_averages_the_two_fine_tuned_networks_softmax_over_clips():
    torch.manual_seed(0)
    # RGB shows class 0, flow class 1: each alone confuses two classes, together they see all three
    rgb_train, labels = _videos(48, 0, shown=0)
    flow_train, _ = _videos(48, 1, shown=1)
    rgb_clips = [_videos(9, 10 + c, shown=0)[0] for c in range(2)]
    flow_clips = [_videos(9, 20 + c, shown=1)[0] for c in range(2)]
    test_labels = [i % 3 for i in range(9)]
    rgb_model, flow_model = _model(), _model()
    flow_before = [p.detach().clone() for p in flow_model.parameters()]
    metrics = finetune_two_stream(
        rgb_model=rgb_model, flow_model=flow_model,
        rgb_sets=(_Clips(rgb_train, labels), [_Clips(v, test_labels) for v in rgb_clips]),
        # flow cannot read training video 2, nor test video 4 in its second clip
        flow_sets=(_Clips(flow_train, labels, bad=2),
                   [_Clips(flow_clips[0], test_labels), _Clips(flow_clips[1], test_labels, bad=4)]),
        steps=60, batch_size=8, lr=3e-3)
    assert any(not torch.equal(a, b) for a, b in zip(flow_before, flow_model.parameters()))
    assert metrics["rgb/train_dropped"] == 0 and metrics["flow/train_dropped"] == 1
    assert metrics["test_used"] == 8 and metrics["test_dropped"] == 1  # video 4 left out of all three
    kept = [v for v in range(9) if v != 4]
    target = torch.tensor([test_labels[v] for v in kept])
    rgb = torch.stack([_softmax(rgb_model, v) for v in rgb_clips]).mean(0)[kept]
    flow = torch.stack([_softmax(flow_model, v) for v in flow_clips]).mean(0)[kept]
    for name, probs in (("rgb", rgb), ("flow", flow), ("R+F", (rgb + flow) / 2)):
        assert metrics[f"{name}/top1"] == pytest.approx((probs.argmax(1) == target).float().mean().item()), name
    centre = (_softmax(rgb_model, rgb_clips[1]) + _softmax(flow_model, flow_clips[1]))[kept] / 2
    assert metrics["R+F/top1_one_clip"] == pytest.approx((centre.argmax(1) == target).float().mean().item())
    print({k: round(v, 3) for k, v in metrics.items()})
    assert metrics["R+F/top1"] > max(metrics["rgb/top1"], metrics["flow/top1"])  # the streams complement
    assert metrics["rgb/train_loss_last"] < metrics["rgb/train_loss_first"]


def test_r_plus_f_refuses_streams_that_list_different_videos():
    videos, labels = _videos(6, 0, shown=0)
    shifted = labels[1:] + labels[:1]
    with pytest.raises(ValueError, match="same videos"):
        finetune_two_stream(rgb_model=_model(), flow_model=_model(),
                            rgb_sets=(_Clips(videos, labels), [_Clips(videos, labels)]),
                            flow_sets=(_Clips(videos, labels), [_Clips(videos, shifted)]), steps=1, batch_size=3)


class _Untouchable(Dataset):
    """A training set that fails when read: proves a refusal comes before any training."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        raise AssertionError("the streams were trained before their test sets were compared")


def test_r_plus_f_refuses_test_sets_of_different_lengths_before_training():
    videos, labels = _videos(6, 0, shown=0)
    with pytest.raises(ValueError, match="6 RGB and 5 flow test videos"):
        finetune_two_stream(rgb_model=_model(), flow_model=_model(),
                            rgb_sets=(_Untouchable(), [_Clips(videos, labels)]),
                            flow_sets=(_Untouchable(), [_Clips(videos[:5], labels[:5])]), steps=1, batch_size=3)


def test_evaluate_finetunes_rgb_flow_and_their_fusion(corpus, tmp_path):  # noqa: F811
    root, flow = corpus
    common = ["checkpoint=random", "encoder=r2d3d_18", "encoder.base_width=4", "dataset=csv", f"dataset.root={root}",
              "dataset.manifest=manifest.csv", f"dataset.flow_root={flow}", "num_frames=8", "num_seq=2", "size=32",
              "batch_size=2", "finetune.steps=2", "finetune.test_clips=2"]
    runs = {"rf": ["flow_checkpoint=random"], "flow": ["dataset.modality=flow"]}
    for name, extra in runs.items():
        result = subprocess.run([sys.executable, str(REPO / "tools/evaluate.py"), "metric=finetune", *common, *extra,
                                 f"out={tmp_path / name}"], capture_output=True, text=True, cwd=REPO, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    fused = json.loads((tmp_path / "rf" / "metrics.json").read_text())
    assert {"rgb/top1", "flow/top1", "R+F/top1", "rgb/train_dropped", "flow/train_dropped"} <= set(fused)
    assert fused["flow_checkpoint"] == "random" and fused["test_used"] == 2 and fused["test_dropped"] == 0
    assert fused["encoder"] == fused["flow_encoder"] == "R2D3D" and fused["flow_input_size"] == "8x32x32 (stride 2)"
    alone = json.loads((tmp_path / "flow" / "metrics.json").read_text())
    assert alone["test_used"] == 2 and "flow_checkpoint" not in alone


def test_two_stream_fine_tuning_is_reproducible_from_its_seed():
    def run(seed: int, caller: int) -> dict:
        torch.manual_seed(0)  # the models are built alike; the fine-tuning draws from `seed` alone
        rgb_model, flow_model = _model(), _model()
        torch.manual_seed(caller)  # the caller's random state must not matter
        rgb, labels = _videos(24, 0, shown=0)
        flow, _ = _videos(24, 1, shown=1)
        return finetune_two_stream(rgb_model=rgb_model, flow_model=flow_model,
                                   rgb_sets=(_Clips(rgb, labels), [_Clips(rgb, labels)]),
                                   flow_sets=(_Clips(flow, labels), [_Clips(flow, labels)]),
                                   steps=6, batch_size=6, seed=seed)

    first = run(0, caller=1)
    assert run(0, caller=2) == first
    assert run(1, caller=1)["rgb/train_loss_last"] != first["rgb/train_loss_last"]
