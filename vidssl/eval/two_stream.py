"""Two-stream evaluation: an RGB and a flow encoder on the same clips, alone and fused ("R+F").

Fusion is late, on frozen features: each stream's pooled features are centred on that stream's train-split
mean, L2-normalised and concatenated with weight 1/sqrt(2) each, so that the cosine similarity of two fused
features is the mean of the two streams' (centred) cosine similarities. Centring matters: without it a
stream whose features share a large common component (a random encoder on flow, whose frames are mostly
the zero-motion level) has cosines all near 1 and no say in the mean. Retrieval on fused features ranks
by that mean; the linear probe is trained on them. (The MemDPC paper's R+F averages the class scores of
two fine-tuned networks; with frozen features and one probe, averaging the similarities is the
counterpart.)

`finetune_two_stream` is that paper protocol: each stream's classifier is fine-tuned on its own (as
`vidssl.eval.finetune.finetune`), and a test video's R+F class is the argmax of the mean of the two
networks' softmax, each already averaged over the video's test clips.

The RGB and flow datasets must list the same videos in the same order and draw the same frames (wrap the
RGB sampler in `vidssl.datasets.flow.FlowAligned`).
"""

from __future__ import annotations

import functools

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from vidssl.eval.finetune import score_clips, scoring_options, top1, train_classifier
from vidssl.eval.retrieval import extract_clips, linear_probe, retrieval_recall


def fuse_features(rgb: Tensor, flow: Tensor, rgb_centre: Tensor | float = 0.0,
                  flow_centre: Tensor | float = 0.0) -> Tensor:
    """N×D1 and N×D2 features → N×(D1+D2): each part minus its centre (D), L2-normalised, scaled by 1/sqrt(2)."""
    if rgb.shape[0] != flow.shape[0]:
        raise ValueError(f"fuse_features: {rgb.shape[0]} RGB and {flow.shape[0]} flow samples")
    parts = [F.normalize(rgb.float() - rgb_centre, dim=1), F.normalize(flow.float() - flow_centre, dim=1)]
    return torch.cat(parts, dim=1) / 2**0.5


def evaluate_two_stream(
    *,
    metric: Literal["retrieval", "linear"],
    rgb_encoder: nn.Module,
    flow_encoder: nn.Module,
    rgb_sets: tuple[Dataset, Dataset],
    flow_sets: tuple[Dataset, Dataset],
    batch_size: int,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    ks: Sequence[int] = (1, 5, 10, 20),
) -> dict[str, float | int]:
    """Retrieval recall (at ``ks``) or linear-probe accuracy of RGB, flow and R+F (train split = gallery, test
    = queries).

    Args: the (train, test) datasets of each stream. Outputs: `{"rgb/R@1": ..., "flow/R@1": ...,
    "R+F/R@1": ...}` (retrieval) or `{"rgb/top1", "flow/top1", "R+F/top1"}` (linear), then per split the
    videos scored and those dropped (bad in either stream): `train_used`, `train_dropped`, `test_used`, `test_dropped`.
    """
    if metric not in ("retrieval", "linear"):
        raise ValueError(f"evaluate_two_stream: metric must be 'retrieval' or 'linear', got {metric!r}")
    clips = {name: [extract_clips(encoder, dataset, batch_size=batch_size, num_workers=num_workers, device=device)
                    for dataset in sets]
             for name, encoder, sets in (("rgb", rgb_encoder, rgb_sets), ("flow", flow_encoder, flow_sets))}
    feats: dict[str, list[Tensor]] = {"rgb": [], "flow": []}
    labels: list[Tensor] = []
    counts: dict[str, int] = {}
    for i, split in enumerate(("train", "test")):
        rgb, flow = clips["rgb"][i], clips["flow"][i]
        # a video bad in either stream is left out of both, so the streams score the same videos
        both = sorted(set(rgb.indices.tolist()) & set(flow.indices.tolist()))
        if not both:
            raise ValueError(f"evaluate_two_stream: no {split} video is readable in both streams")
        for name, c in (("rgb", rgb), ("flow", flow)):
            rows = {index: row for row, index in enumerate(c.indices.tolist())}
            keep = torch.tensor([rows[index] for index in both])
            feats[name].append(c.features[keep])
            if name == "rgb":
                labels.append(c.labels[keep])
            elif not torch.equal(c.labels[keep], labels[i]):
                raise ValueError("the RGB and flow datasets do not list the same videos in the same order")
        listed = len(rgb.indices) + len(rgb.dropped)
        counts.update({f"{split}_used": len(both), f"{split}_dropped": listed - len(both)})
    centres = feats["rgb"][0].mean(0), feats["flow"][0].mean(0)  # of the train split
    feats["R+F"] = [fuse_features(r, f, *centres) for r, f in zip(feats["rgb"], feats["flow"])]
    score = functools.partial(retrieval_recall, ks=tuple(ks)) if metric == "retrieval" else linear_probe
    metrics: dict[str, float] = {}
    for name, (train, test) in feats.items():
        metrics.update({f"{name}/{k}": v for k, v in score(train, labels[0], test, labels[1]).items()})
    return {**metrics, **counts}


def finetune_two_stream(
    *,
    rgb_model: nn.Module,
    flow_model: nn.Module,
    rgb_sets: tuple[Dataset, Sequence[Dataset]],
    flow_sets: tuple[Dataset, Sequence[Dataset]],
    **options: Any,
) -> dict[str, float | int]:
    """Fine-tune an RGB and a flow classifier, each on its own stream; test RGB, flow and R+F (late fusion).

    Args: per stream (train set, test sets with one clip per video each), both streams listing the same
    videos in the same order and clip positions. `options`: the keywords of `train_classifier` (`steps`,
    `batch_size`, ...); each model is trained as `finetune` trains one, with the same options. R+F: the
    mean of the two streams' multi-clip softmax.
    Outputs: `{"rgb/top1", "flow/top1", "R+F/top1"` (multi-clip), the same `…/top1_one_clip` (middle
    clip), `"rgb/train_loss_first"`, `…_last`, `"rgb/train_dropped"` (and flow's), `"test_used"` (videos
    every clip of both streams could read: all three accuracies are over these), `"test_dropped"` (the rest)}.
    """
    listed = len(rgb_sets[1][0])
    if len(flow_sets[1][0]) != listed:  # before any training: a mismatch wastes both fine-tunings
        raise ValueError(f"finetune_two_stream: {listed} RGB and {len(flow_sets[1][0])} flow test videos")
    train: dict[str, dict[str, float | int]] = {}
    scores = {}
    for name, model, (train_set, test_sets) in (("rgb", rgb_model, rgb_sets), ("flow", flow_model, flow_sets)):
        train[name] = train_classifier(model, train_set, **options)
        scores[name] = score_clips(model, test_sets, **scoring_options(options))
    # a video bad in either stream is left out of both, so the three accuracies score the same videos
    videos = sorted(set(scores["rgb"].mean) & set(scores["flow"].mean))
    if not videos:
        raise ValueError("finetune_two_stream: no test video is readable in both streams")
    labels = scores["rgb"].labels
    if any(scores["flow"].labels[v] != labels[v] for v in videos):
        raise ValueError("the RGB and flow datasets do not list the same videos in the same order")
    fused = {part: {v: (getattr(scores["rgb"], part)[v] + getattr(scores["flow"], part)[v]) / 2 for v in videos}
             for part in ("mean", "centre")}
    metrics: dict[str, float | int] = {}
    for name, mean, centre in (("rgb", scores["rgb"].mean, scores["rgb"].centre),
                               ("flow", scores["flow"].mean, scores["flow"].centre),
                               ("R+F", fused["mean"], fused["centre"])):
        metrics[f"{name}/top1"] = top1(mean, labels, videos)
        metrics[f"{name}/top1_one_clip"] = top1(centre, labels, videos)
    for name, values in train.items():
        metrics.update({f"{name}/{key}": value for key, value in values.items()})
    return {**metrics, "test_used": len(videos), "test_dropped": listed - len(videos)}
