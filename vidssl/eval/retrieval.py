"""Evaluation of a frozen video encoder: nearest-neighbour retrieval and a linear probe.

Both work on the pooled features (`vidssl.encoders.pool`) of one centred evaluation clip per video, as
the MemDPC and CoCLR papers evaluate: the train split is the gallery (and the probe's training set),
the val/test split holds the queries.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vidssl.datasets.dataset import collate_kept
from vidssl.encoders import pool

log = logging.getLogger(__name__)


class ClipFeatures(NamedTuple):
    """What `extract_clips` read: features N×D, labels N and dataset indices N of the clips it scored,
    and the `(index, path, reason)` of every bad clip it dropped."""

    features: Tensor
    labels: Tensor
    indices: Tensor
    dropped: list[tuple[int, str, str]]


@torch.no_grad()
def extract_clips(
    encoder: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> ClipFeatures:
    """Pooled encoder features of every good sample of `dataset`, in dataset order; bad ones are dropped.

    The dataset decides the clip (for evaluation: a sampler with `random=False` and `EvalTransform`,
    so every video gives its centred clip). A `VideoDataset` built with `substitute=False` gives a
    marker for a file it cannot read: that video is left out and listed in `dropped` (and logged), never
    replaced by another. The encoder is moved to `device` and run in eval mode; its previous train/eval
    mode is restored afterwards.

    Inputs: samples `{"video": C×T×H×W, "label": int, "index": int (optional), ...}`.
    Outputs: `ClipFeatures(features N×D float32 on the CPU, labels N int64, indices N int64, dropped)`.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_kept
    )
    was_training = encoder.training
    encoder.to(device).eval()
    feats, labels, indices, dropped = [], [], [], []
    try:
        from tqdm import tqdm  # progress and ETA on stderr: extraction takes minutes on a CPU

        batches = zip(range(0, len(dataset), batch_size), loader)
        for start, batch in tqdm(batches, total=len(loader), desc="features", unit="batch"):
            dropped += batch["dropped"]
            if "video" not in batch:
                continue
            video = batch["video"].to(device, non_blocking=True)
            feats.append(pool(encoder(video)).float().cpu())  # (B, D)
            labels.append(torch.as_tensor(batch["label"], dtype=torch.long))
            # a dataset without an "index" key never drops, so its batch holds positions start...
            indices.append(torch.as_tensor(batch["index"]) if "index" in batch
                           else torch.arange(start, start + video.shape[0]))
    finally:
        encoder.train(was_training)
    for index, path, reason in dropped:
        log.warning("evaluation drops bad video %s (entry %d): %s", path, index, reason)
    if not feats:
        raise ValueError(f"extract_features: the dataset {dataset!r} yielded no samples"
                         + (f" ({len(dropped)} bad videos dropped)" if dropped else ""))
    return ClipFeatures(torch.cat(feats), torch.cat(labels), torch.cat(indices).long(), dropped)


def extract_features(encoder: nn.Module, dataset: Dataset, **options: Any) -> tuple[Tensor, Tensor]:
    """`(features N×D, labels N)` of `extract_clips` (same options): the good samples, in dataset order."""
    clips = extract_clips(encoder, dataset, **options)
    return clips.features, clips.labels


def clip_counts(split: str, clips: ClipFeatures) -> dict[str, int]:
    """`{"<split>_used": clips scored, "<split>_dropped": bad videos left out}` for metrics.json."""
    return {f"{split}_used": int(clips.features.shape[0]), f"{split}_dropped": len(clips.dropped)}


def _check_labelled(name: str, feats: Tensor, labels: Tensor) -> None:
    if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}: expected features N×D and labels N, got {tuple(feats.shape)} and {tuple(labels.shape)}"
        )
    if feats.shape[0] == 0:
        raise ValueError(f"{name}: no samples")
    if (labels < 0).any():
        raise ValueError(
            f"{name}: {int((labels < 0).sum())} samples have label -1 (unknown); retrieval and the linear "
            "probe need a labelled manifest (a `label` column)"
        )


def check_ks(ks: Sequence[int], gallery_size: int) -> None:
    """Refuse recall cut-offs that are not positive or exceed the gallery (train split) size."""
    if not ks or min(ks) < 1:
        raise ValueError(f"retrieval: ks must be positive integers, got {list(ks)}")
    if max(ks) > gallery_size:
        raise ValueError(f"retrieval: k={max(ks)} exceeds the gallery size {gallery_size} (the train split's "
                         f"clips); pass smaller ks=[...]")


def retrieval_recall(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = (1, 5, 10, 20),
) -> dict[str, float]:
    """Nearest-neighbour video retrieval Recall@k (cosine similarity).

    Every test clip queries the train clips; a query is a hit at k when any of its k nearest train
    clips shares its class. Recall@k is the fraction of hits (in [0, 1]).

    Inputs: train_feats N×D, train_labels N, test_feats M×D, test_labels M.
    Outputs: `{"R@1": float, "R@5": float, ...}`, one key per k.
    """
    _check_labelled("retrieval_recall train (gallery)", train_feats, train_labels)
    _check_labelled("retrieval_recall test (queries)", test_feats, test_labels)
    check_ks(ks, train_feats.shape[0])
    sim = F.normalize(test_feats.float(), dim=1) @ F.normalize(train_feats.float(), dim=1).T  # (M, N)
    nearest = sim.topk(max(ks), dim=1).indices  # (M, K), most similar first
    same_class = train_labels[nearest] == test_labels[:, None]  # (M, K)
    # cummax turns "the j-th neighbour matches" into "some neighbour among the first j+1 matches".
    hit_within = same_class.int().cummax(dim=1).values  # (M, K)
    return {f"R@{k}": hit_within[:, k - 1].float().mean().item() for k in ks}


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 300,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Top-1 accuracy of a linear classifier trained on frozen features.

    Features are L2-normalised, then standardised with the train split's mean and std (so the
    learning rate does not depend on the encoder's feature scale). A `nn.Linear` is trained with
    full-batch AdamW for `epochs` steps — features of a whole split fit in memory, and full batches
    make the probe deterministic for a given `seed`.

    Inputs: train_feats N×D, train_labels N, test_feats M×D, test_labels M (labels in 0..K-1).
    Outputs: `{"top1": float}` in [0, 1].
    """
    _check_labelled("linear_probe train", train_feats, train_labels)
    _check_labelled("linear_probe test", test_feats, test_labels)
    x_train = F.normalize(train_feats.float(), dim=1)
    x_test = F.normalize(test_feats.float(), dim=1)
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():  # seeded init so the probe does not depend on the global RNG
        bound = 1.0 / x_train.shape[1] ** 0.5
        classifier.weight.uniform_(-bound, bound, generator=generator)
        classifier.bias.zero_()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(classifier(x_train), train_labels).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = classifier(x_test).argmax(1)
    return {"top1": (predicted == test_labels).float().mean().item()}


def evaluate_checkpoint(
    *,
    metric: Literal["retrieval", "linear"],
    encoder: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    ks: Sequence[int] = (1, 5, 10, 20),
    epochs: int = 300,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> dict[str, float | int]:
    """Retrieval recall or linear-probe accuracy of `encoder` (train split = gallery, test = queries).

    `tools/evaluate.py` builds the encoder (`vidssl.run.load_encoder`, or random init) and the
    two evaluation datasets; this function extracts features and scores them.

    Outputs: `{"R@1", "R@5", "R@10", "R@20"}` (retrieval, per `ks`) or `{"top1"}` (linear), in [0, 1],
    then the clips scored and the bad videos dropped per split (`clip_counts`: `train_used`, `train_dropped`,
    `test_used`, `test_dropped`).
    """
    if metric not in ("retrieval", "linear"):
        raise ValueError(f"evaluate_checkpoint: metric must be 'retrieval' or 'linear', got {metric!r}")
    if metric == "retrieval":
        check_ks(ks, len(train_set))  # before minutes of feature extraction, not after
    train = extract_clips(encoder, train_set, batch_size=batch_size, num_workers=num_workers, device=device)
    test = extract_clips(encoder, test_set, batch_size=batch_size, num_workers=num_workers, device=device)
    if metric == "retrieval":
        scores = retrieval_recall(train.features, train.labels, test.features, test.labels, ks=ks)
    else:
        scores = linear_probe(train.features, train.labels, test.features, test.labels,
                              epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed)
    return {**scores, **clip_counts("train", train), **clip_counts("test", test)}
