"""Two-stream evaluation: an RGB and a flow encoder on the same clips, alone and fused ("R+F").

Fusion is late, on frozen features: each stream's pooled features are centred on that stream's train-split
mean, L2-normalised and concatenated with weight 1/sqrt(2) each, so that the cosine similarity of two fused
features is the mean of the two streams' (centred) cosine similarities. Centring matters: without it a
stream whose features share a large common component (a random encoder on flow, whose frames are mostly
the zero-motion level) has cosines all near 1 and no say in the mean. Retrieval on fused features ranks
by that mean; the linear probe is trained on them. (The MemDPC paper's R+F averages the class scores of
two fine-tuned networks; with frozen features and one probe, averaging the similarities is the
counterpart.)

The RGB and flow datasets must list the same videos in the same order and draw the same frames (wrap the
RGB sampler in `vidssl.datasets.flow.FlowAligned`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

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
) -> dict[str, float | int]:
    """Retrieval recall or linear-probe accuracy of RGB, flow and R+F (train split = gallery, test = queries).

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
    score = retrieval_recall if metric == "retrieval" else linear_probe
    metrics: dict[str, float] = {}
    for name, (train, test) in feats.items():
        metrics.update({f"{name}/{k}": v for k, v in score(train, labels[0], test, labels[1]).items()})
    return {**metrics, **counts}
