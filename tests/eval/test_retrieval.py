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
    assert retrieval == {"R@1": 1.0, "R@5": 1.0}
    linear = evaluate_checkpoint(
        metric="linear", encoder=encoder, train_set=train, test_set=test, batch_size=4, epochs=50, lr=0.05
    )
    assert linear == {"top1": 1.0}
    with pytest.raises(ValueError, match="metric"):
        evaluate_checkpoint(metric="knn", encoder=encoder, train_set=train, test_set=test, batch_size=4)
