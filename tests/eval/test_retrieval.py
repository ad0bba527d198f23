"""Retrieval recall and linear probe, against slow obvious references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidssl.eval.retrieval import evaluate_checkpoint, extract_features, linear_probe, retrieval_recall


def _recall_reference(train_feats, train_labels, test_feats, test_labels, ks):
    """One query at a time: rank the gallery by cosine similarity, look for the class in the top k."""
    recalls = {}
    for k in ks:
        hits = 0
        for q in range(len(test_feats)):
            sims = [
                float(torch.dot(test_feats[q], g) / (test_feats[q].norm() * g.norm())) for g in train_feats
            ]
            order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
            hits += any(int(train_labels[i]) == int(test_labels[q]) for i in order)
        recalls[f"R@{k}"] = hits / len(test_feats)
    return recalls


def test_recall_matches_loop_reference():
    torch.manual_seed(0)
    train_feats, test_feats = torch.randn(40, 8), torch.randn(15, 8)
    train_labels, test_labels = torch.randint(0, 5, (40,)), torch.randint(0, 5, (15,))
    ks = (1, 3, 5, 10, 20)
    got = retrieval_recall(train_feats, train_labels, test_feats, test_labels, ks=ks)
    want = _recall_reference(train_feats, train_labels, test_feats, test_labels, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key])
    # Recall@k can only grow with k.
    values = [got[f"R@{k}"] for k in ks]
    assert values == sorted(values)


def test_recall_hand_computed_and_cosine_not_euclidean():
    # Gallery: class 0 along +x (far away), class 1 along +y. Query along +x but close to the class-1
    # point in Euclidean distance: cosine similarity must still pick class 0.
    train_feats = torch.tensor([[10.0, 0.0], [0.1, 1.0]])
    train_labels = torch.tensor([0, 1])
    test_feats = torch.tensor([[1.0, 0.05], [0.0, 2.0]])
    test_labels = torch.tensor([0, 0])
    got = retrieval_recall(train_feats, train_labels, test_feats, test_labels, ks=(1, 2))
    assert got == {"R@1": 0.5, "R@2": 1.0}


def test_recall_rejects_unlabelled_and_oversized_k():
    feats = torch.randn(4, 3)
    with pytest.raises(ValueError, match="label -1"):
        retrieval_recall(feats, torch.tensor([0, 1, -1, 0]), feats, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="gallery size"):
        retrieval_recall(feats, torch.zeros(4, dtype=torch.long), feats, torch.zeros(4, dtype=torch.long))


def _clusters(n_per_class: int, num_classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_linear_probe_separable_clusters_and_chance_on_noise():
    train_feats, train_labels = _clusters(20, 4, 16, seed=1)
    test_feats, test_labels = _clusters(10, 4, 16, seed=2)
    result = linear_probe(
        train_feats, train_labels, test_feats, test_labels, epochs=100, lr=0.05, weight_decay=1e-4, seed=0
    )
    assert result["top1"] >= 0.95

    # Labels unrelated to the features: the probe may memorise train but cannot beat chance by much.
    g = torch.Generator().manual_seed(3)
    noise_train, noise_test = torch.randn(200, 16, generator=g), torch.randn(400, 16, generator=g)
    rand_train, rand_test = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (400,), generator=g)
    chance = linear_probe(noise_train, rand_train, noise_test, rand_test, epochs=100, lr=0.05, weight_decay=1e-4, seed=0)
    assert chance["top1"] < 0.4


def test_linear_probe_is_deterministic_for_a_seed():
    train_feats, train_labels = _clusters(5, 3, 8, seed=4)
    test_feats, test_labels = _clusters(5, 3, 8, seed=5)
    kw = dict(epochs=5, lr=0.01, weight_decay=0.0, seed=7)
    torch.manual_seed(0)
    a = linear_probe(train_feats, train_labels, test_feats, test_labels, **kw)
    torch.manual_seed(99)  # the global RNG must not matter
    b = linear_probe(train_feats, train_labels, test_feats, test_labels, **kw)
    assert a == b


class _ListDataset(torch.utils.data.Dataset):
    """Samples shaped like `VideoDataset`'s, without decoding anything."""

    def __init__(self, videos: torch.Tensor, labels: list[int]):
        self.videos, self.labels = videos, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"video": self.videos[i], "label": self.labels[i], "index": i, "path": f"v{i}.mp4"}


class _TinyEncoder(nn.Module):
    out_channels = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def test_extract_features_order_labels_and_eval_mode():
    torch.manual_seed(0)
    videos = torch.randn(7, 3, 4, 8, 8)
    labels = [3, 1, 4, 1, 5, 2, 0]
    encoder = _TinyEncoder().train()
    feats, got_labels = extract_features(encoder, _ListDataset(videos, labels), batch_size=3)
    assert feats.shape == (7, 4) and got_labels.tolist() == labels
    assert encoder.training  # mode restored
    with torch.no_grad():
        want = encoder.eval()(videos).mean(dim=(2, 3, 4))  # BatchNorm with running stats: eval mode
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-5)


def test_evaluate_checkpoint_metrics():
    torch.manual_seed(0)
    # Class = sign of the mean colour of the clip, which a 3D conv + pooling picks up.
    videos = torch.randn(24, 3, 2, 6, 6) + torch.tensor([2.0, -2.0]).repeat(12)[:, None, None, None, None]
    labels = [0, 1] * 12
    train, test = _ListDataset(videos[:16], labels[:16]), _ListDataset(videos[16:], labels[16:])
    encoder = _TinyEncoder()
    retrieval = evaluate_checkpoint(
        metric="retrieval", encoder=encoder, train_set=train, test_set=test, batch_size=4, ks=(1, 5)
    )
    # The class shifts every pixel by ±2: even a random conv + pooling separates it.
    counts = {"train_used": 16, "train_dropped": 0, "test_used": 8, "test_dropped": 0}
    assert retrieval == {"R@1": 1.0, "R@5": 1.0, **counts}
    linear = evaluate_checkpoint(
        metric="linear", encoder=encoder, train_set=train, test_set=test, batch_size=4, epochs=50, lr=0.05
    )
    assert linear == {"top1": 1.0, **counts}
    with pytest.raises(ValueError, match="metric"):
        evaluate_checkpoint(metric="knn", encoder=encoder, train_set=train, test_set=test, batch_size=4)


class _Untouchable(_ListDataset):
    def __getitem__(self, i: int) -> dict:
        raise AssertionError("a feature was extracted before the ks check")


def test_retrieval_refuses_a_k_above_the_gallery_before_extracting():
    videos = torch.randn(5, 3, 2, 6, 6)
    gallery, queries = _Untouchable(videos, [0] * 5), _Untouchable(videos, [0] * 5)
    with pytest.raises(ValueError, match="gallery size 5"):
        evaluate_checkpoint(metric="retrieval", encoder=_TinyEncoder(), train_set=gallery, test_set=queries,
                            batch_size=2, ks=(1, 6))
    with pytest.raises(ValueError, match="positive"):
        evaluate_checkpoint(metric="retrieval", encoder=_TinyEncoder(), train_set=gallery, test_set=queries,
                            batch_size=2, ks=(0,))


def test_context_readout_is_relu_time_mean_convgru_last_state():
    from tiny_encoders import TinyVideoEncoder

    from vidssl.encoders.heads import ConvGRU
    from vidssl.eval.finetune import ContextReadout

    torch.manual_seed(0)
    encoder, forward, backward = TinyVideoEncoder(), ConvGRU(8, 8), ConvGRU(8, 8)
    video = torch.randn(2, 3, 3 * 4, 8, 8)  # 3 blocks of 4 frames
    out = ContextReadout(encoder, [forward, backward], num_seq=3)(video)
    maps = torch.stack([torch.relu(encoder(video[:, :, 4 * n: 4 * n + 4])).mean(2) for n in range(3)], 1)
    h_f = h_b = None
    for n in range(3):
        h_f = forward.cells[0](maps[:, n], h_f)
        h_b = backward.cells[0](maps[:, 2 - n], h_b)
    torch.testing.assert_close(out, torch.cat([h_f, h_b], 1))
    assert out.shape == (2, 16, 2, 2)
    with pytest.raises(ValueError, match="num_seq"):
        ContextReadout(encoder, [forward], num_seq=5)(video)


def test_context_readout_loads_the_task_aggregators():
    from tiny_encoders import TinyVideoEncoder

    from vidssl.eval.finetune import context_readout
    from vidssl.run import Checkpoint
    from vidssl.tasks.memdpc import MemDPC

    torch.manual_seed(0)
    task = MemDPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, memory_size=8)
    readout = context_readout(task.encoder, 4, Checkpoint.of_task(task, {"kernel_size": 1, "num_layers": 1}))
    assert len(readout.aggregators) == 2 and readout.out_channels == 16
    torch.testing.assert_close(readout.aggregators[1].state_dict(), task.aggregator_backward.state_dict())
    random = context_readout(TinyVideoEncoder(), 4)
    assert len(random.aggregators) == 1
    torch.testing.assert_close(random.aggregators[0].state_dict(),
                               context_readout(TinyVideoEncoder(), 4).aggregators[0].state_dict())
    with pytest.raises(KeyError, match="aggregator"):
        context_readout(task.encoder, 4, Checkpoint(model={"encoder.x": torch.zeros(1)}))


def test_finetune_learns_a_separable_task_and_trains_the_whole_network():
    from tiny_encoders import TinyVideoEncoder

    from vidssl.eval.finetune import ContextClassifier, context_readout, finetune

    torch.manual_seed(0)

    def split(n: int, seed: int) -> _ListDataset:
        g = torch.Generator().manual_seed(seed)
        labels = [i % 3 for i in range(n)]
        videos = torch.randn(n, 3, 8, 8, 8, generator=g)
        for i, label in enumerate(labels):  # the class brightens one colour channel
            videos[i, label] += 1.5
        return _ListDataset(videos, labels)

    model = ContextClassifier(context_readout(TinyVideoEncoder(), 2), num_classes=3, dropout=0.5)
    before = [p.detach().clone() for p in model.readout.encoder.parameters()]
    result = finetune(model, split(48, 0), [split(12, 1), split(12, 1)], steps=60, batch_size=8, lr=3e-3)
    assert result["top1"] >= 0.9 and result["top1_one_clip"] >= 0.9
    assert result["train_loss_last"] < result["train_loss_first"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.readout.encoder.parameters()))  # whole net


def _evaluate(*args: str, cwd) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, str(repo / "tools" / "evaluate.py"), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def test_evaluate_cli_ks_context_readout_and_finetune(synthetic_root, tmp_path):
    import json

    common = ["encoder=r2d3d_18", "encoder.base_width=4", "dataset=synthetic", f"dataset.root={synthetic_root}",
              "checkpoint=random", "batch_size=8"]
    refused = _evaluate("metric=retrieval", "ks=[1,1000]", f"out={tmp_path / 'k'}", *common, cwd=tmp_path)
    assert refused.returncode != 0 and "exceeds the gallery size 56" in refused.stderr
    context = _evaluate("metric=retrieval", "ks=[1,3]", "readout=context", "num_seq=4", f"out={tmp_path / 'r'}",
                        *common, cwd=tmp_path)
    assert context.returncode == 0, context.stderr[-2000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["readout"] == "context" and set(metrics) >= {"R@1", "R@3"}
    tuned = _evaluate("metric=finetune", "finetune.steps=3", "finetune.test_clips=2", f"out={tmp_path / 'f'}",
                      *common, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= 1 and metrics["test_clips"] == 2
    assert metrics["test_used"] == 24 and metrics["test_dropped"] == 0 and metrics["train_dropped"] == 0
    # what was used: said in the start line, recorded beside the threads
    assert ("evaluate: features checkpoint random, encoder R2D3D (16 output channels), layer context (ConvGRU over 4 "
            "blocks), all fine-tuned, input 16x64x64 (stride 2)") in tuned.stdout.splitlines()
    assert {k: metrics[k] for k in ("feature_source", "encoder", "width", "input_size", "threads")} == {
        "feature_source": "checkpoint random", "encoder": "R2D3D", "width": 16, "input_size": "16x64x64 (stride 2)",
        "threads": 1}


def test_finetune_loads_a_dpc_encoder_with_running_statistics(tmp_path):
    from fixtures.dpc.official_state import converted_case

    from vidssl.eval.finetune import context_readout, load_trained

    task, _, _ = converted_case("dpc", tmp_path)  # writes tmp_path/converted.pt
    encoder, checkpoint = load_trained(str(tmp_path / "converted.pt"), None, running_stats=True)
    assert "bn1.running_mean" in encoder.state_dict()  # as the papers' downstream model
    for name, value in task.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[name], value), name
    as_trained, _ = load_trained(str(tmp_path / "converted.pt"), None)
    assert "bn1.running_mean" not in as_trained.state_dict()
    readout = context_readout(encoder, 5, checkpoint)
    torch.testing.assert_close(readout.aggregators[0].state_dict(), task.aggregator.state_dict())


class _WithBad(_ListDataset):
    """Index `bad` is a file the dataset cannot read: the marker a `VideoDataset(substitute=False)` gives."""

    def __init__(self, videos, labels, bad: int) -> None:
        super().__init__(videos, labels)
        self.bad = bad

    def __getitem__(self, i: int) -> dict:
        if i == self.bad:
            return {"index": i, "path": f"v{i}.mp4", "label": self.labels[i], "error": "VideoDecodeError: truncated"}
        return super().__getitem__(i)


def test_finetune_leaves_a_bad_video_out_of_training_and_of_every_test_clip():
    from tiny_encoders import TinyVideoEncoder

    from vidssl.eval.finetune import ContextClassifier, context_readout, finetune

    torch.manual_seed(0)
    videos, labels = torch.randn(12, 3, 8, 8, 8), [i % 3 for i in range(12)]
    model = ContextClassifier(context_readout(TinyVideoEncoder(), 2), num_classes=3)
    # the second test set cannot read video 5: it is scored in neither (its other clip is not used alone)
    result = finetune(model, _WithBad(videos, labels, bad=2), [_ListDataset(videos, labels),
                      _WithBad(videos, labels, bad=5)], steps=3, batch_size=4)
    assert result["train_dropped"] == 1 and result["test_used"] == 11 and result["test_dropped"] == 1


def test_two_stream_scores_only_videos_both_streams_read():
    from vidssl.eval.two_stream import evaluate_two_stream

    torch.manual_seed(0)
    videos = torch.randn(16, 3, 2, 6, 6) + torch.tensor([2.0, -2.0]).repeat(8)[:, None, None, None, None]
    labels = [0, 1] * 8
    rgb = (_ListDataset(videos[:10], labels[:10]), _ListDataset(videos[10:], labels[10:]))
    flow = (_WithBad(videos[:10], labels[:10], bad=3), _WithBad(videos[10:], labels[10:], bad=0))
    metrics = evaluate_two_stream(metric="linear", rgb_encoder=_TinyEncoder(), flow_encoder=_TinyEncoder(),
                                  rgb_sets=rgb, flow_sets=flow, batch_size=4)
    counts = [metrics[k] for k in ("train_used", "train_dropped", "test_used", "test_dropped")]
    assert counts == [9, 1, 5, 1]
    assert metrics["R+F/top1"] == 1.0  # the streams stay aligned video by video after the drop
