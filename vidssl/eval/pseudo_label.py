"""Pseudo-labelling a dataset: the library behind
``python tools/pseudo_label.py method=selavi|kmeans|sinkhorn checkpoint=CKPT|random dataset=... out=LABELS.csv``.

Each clip is seen once through a deterministic view (the centred clip of the task's layout, resized and
centre-cropped). ``method=selavi`` labels with a SeLaVi task's heads: every head predicts a cluster from
the combined prediction of video and audio (clips without sound: from the video heads alone, when
allowed). ``method=kmeans`` and ``method=sinkhorn`` cluster the pooled, L2-normalised features of any
checkpoint's encoder (or a random one) into K clusters: k-means (scikit-learn), or balanced k-means
whose assignments are optimal transport under equal cluster sizes (`balanced_kmeans`).

The output is a CSV with one row per clip — ``path`` (as in the manifest), ``cluster`` (head 0),
``confidence`` (head 0's probability of that cluster), ``cluster_h1``… (further heads) — a table of
cluster sizes, and a PNG grid of the clips nearest each cluster's centre.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.formats import VideoEntry
from vidssl.encoders import pool



@dataclass
class Labelling:
    """Pseudo-labels of a dataset's clips.

    ``clusters`` H×N (head h's cluster of clip n), ``confidence`` N, ``embeddings`` N×D (L2-normalised
    head inputs, for cluster centres); ``video_only`` lists the clips labelled without sound and
    ``skipped`` maps the clips left unlabelled to the reason.
    """

    paths: list[str]
    clusters: Tensor
    confidence: Tensor
    embeddings: Tensor
    video_only: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def num_heads(self) -> int:
        return self.clusters.shape[0]


def task_from_checkpoint(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The task a checkpoint was trained with, carrying its weights (`Checkpoint.build_task`).

    Outputs: (task in eval mode on the CPU, the task config ``{"model": ..., "data": ...}`` as a dict).
    """
    from vidssl.run import Checkpoint

    source = Checkpoint.load(checkpoint)
    return source.build_task(), {"model": source.task_config, "data": source.data_config}


def random_task(task_cfg: Mapping[str, Any]) -> nn.Module:
    """The task of ``task_cfg`` (``{"model": ..., "data": ...}``) at random initialisation with the fixed
    seed every ``checkpoint=random`` baseline uses, in eval mode."""
    from vidssl.run import Checkpoint

    return Checkpoint.random(task=task_cfg).build_task()


def labelling_dataset(
    root: str | Path, entries: list[VideoEntry], data_cfg: Mapping[str, Any], *, with_audio: bool,
    backend: str = "av", seed: int = 0,
) -> VideoDataset:
    """The deterministic view of every clip for labelling, from the task's ``data`` config: its sampler
    with ``random=False`` (the centred clip), ``EvalTransform`` at the training crop size, and its audio
    features when ``with_audio`` (silence for videos without sound, flagged by ``has_audio``)."""
    from hydra.utils import instantiate

    from vidssl.datasets.transforms import EvalTransform

    data = dict(data_cfg)
    sampler_cfg = dict(data["sampler"])
    if "random" in _signature_keys(sampler_cfg["_target_"]):
        sampler_cfg["random"] = False
    transform_cfg = data["transform"]
    size = transform_cfg.get("size", 112) if isinstance(transform_cfg, Mapping) else 112
    audio = instantiate(data["audio"]) if with_audio and data.get("audio") else None
    extra = {k: data[k] for k in ("audio_rate", "audio_seconds") if data.get(k) is not None}
    return VideoDataset(
        root=root, entries=entries, sampler=instantiate(sampler_cfg), transform=EvalTransform(size=size),
        views=1, audio=audio, require_audio=False, backend=backend, seed=seed, **extra,
    )


def _signature_keys(target: str) -> set[str]:
    import inspect

    from hydra.utils import get_class

    return set(inspect.signature(get_class(target)).parameters)


METHODS = ("selavi", "kmeans", "sinkhorn")


@torch.no_grad()
def _each_clip(
    dataset: VideoDataset, compute, *, batch_size: int, num_workers: int, device: str | torch.device,
) -> dict[int, tuple]:
    """``compute(inputs, batch) -> per-clip rows`` over the dataset; each clip once, by dataset index (a
    bad file makes the dataset load another clip in its place)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    found: dict[int, tuple] = {}
    from tqdm import tqdm  # progress and ETA on stderr: extraction takes minutes on a CPU

    for batch in tqdm(loader, desc="encode clips", unit="batch"):
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
        for index, row in zip(batch["index"].tolist(), compute(inputs, batch)):
            found.setdefault(index, row)
    return found


def _missing(dataset: VideoDataset, found: dict[int, tuple]) -> dict[str, str]:
    return {entry.path: dataset.failures.get(entry.path, "could not be decoded")
            for index, entry in enumerate(dataset.entries) if index not in found}


def label_clips(
    task: nn.Module,
    dataset: VideoDataset,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    allow_video_only: bool = True,
    equipartition: bool = False,
    modalities: list[str] | None = None,
) -> Labelling:
    """Label every clip of ``dataset`` with every head of ``task`` (a ``SeLaVi``).

    Clips without sound are labelled from the video heads alone when ``allow_video_only`` and the task
    can (split fusion), and otherwise skipped with the reason. ``modalities`` (e.g. ``["video"]``)
    labels from those heads only; None combines every modality. ``equipartition`` assigns clusters by
    Sinkhorn-Knopp over the whole dataset (balanced clusters, the task's own relabelling) instead of
    each clip's argmax. Files the dataset cannot decode are skipped, not replaced.
    """
    if not hasattr(task, "predict"):
        raise TypeError(f"method=selavi needs a SeLaVi checkpoint, got a {type(task).__name__} task; "
                        "cluster any encoder's features with method=kmeans or method=sinkhorn")
    task = task.to(device).eval()
    video_only_ok = allow_video_only and getattr(task, "can_label_video_only", False)
    audio_needed = modalities is not None and "video" not in modalities

    def compute(inputs: dict[str, Tensor], batch: dict[str, Any]) -> list[tuple]:
        has_audio = inputs.pop("has_audio", None)
        if has_audio is not None and video_only_ok and modalities is None:
            inputs["has_audio"] = has_audio
        embedding, log_probs = task.predict(inputs, modalities)
        embedding = F.normalize(embedding.float(), dim=1).cpu()
        silent = [False] * len(embedding) if has_audio is None else (~has_audio.bool()).tolist()
        return [(embedding[r], [lp[r].cpu() for lp in log_probs], silent[r]) for r in range(len(embedding))]

    found = _each_clip(dataset, compute, batch_size=batch_size, num_workers=num_workers, device=device)
    paths, embeddings, scores, video_only, skipped = [], [], [], [], _missing(dataset, found)
    for index, entry in enumerate(dataset.entries):
        if index not in found:
            continue
        emb, log_probs, silent = found[index]
        if silent and audio_needed:
            skipped[entry.path] = "no audio stream (labelling from the audio heads alone)"
            continue
        if silent and not video_only_ok:
            skipped[entry.path] = "no audio stream (labelling from video alone is off or not possible)"
            continue
        if silent:
            video_only.append(entry.path)
        paths.append(entry.path)
        embeddings.append(emb)
        scores.append(log_probs)
    if not paths:
        raise ValueError(f"no clip of {dataset.root} could be labelled; skipped: {dict(list(skipped.items())[:5])}")

    per_head = [torch.stack([s[h] for s in scores]) for h in range(len(scores[0]))]  # [N×K_h]
    if equipartition:
        codes = task.assign(per_head)
        clusters = torch.stack([q.argmax(1) for q in codes])
    else:
        clusters = torch.stack([lp.argmax(1) for lp in per_head])
    confidence = per_head[0].gather(1, clusters[0][:, None]).squeeze(1).exp()
    return Labelling(paths=paths, clusters=clusters, confidence=confidence, embeddings=torch.stack(embeddings),
                     video_only=video_only, skipped=skipped)


def encoder_features(
    encoder: nn.Module, dataset: VideoDataset, *, batch_size: int = 16, num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[list[str], Tensor, dict[str, str]]:
    """Pooled, L2-normalised video features of every clip: (paths, N×D, skipped {path: reason})."""
    encoder = encoder.to(device).eval()

    def compute(inputs: dict[str, Tensor], batch: dict[str, Any]) -> list[tuple]:
        features = F.normalize(pool(encoder(inputs["video"])).float(), dim=1).cpu()
        return [(f,) for f in features]

    found = _each_clip(dataset, compute, batch_size=batch_size, num_workers=num_workers, device=device)
    skipped = _missing(dataset, found)
    if not found:
        raise ValueError(f"no clip of {dataset.root} could be decoded: {dict(list(skipped.items())[:5])}")
    kept = [i for i in range(len(dataset.entries)) if i in found]
    return [dataset.entries[i].path for i in kept], torch.stack([found[i][0] for i in kept]), skipped


def balanced_kmeans(
    features: Tensor, num_clusters: int, *, epsilon: float = 0.05, iterations: int = 50, seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """K-means on the unit sphere whose assignment step is optimal transport under equal cluster sizes.

    From k-means++ centres, alternate: codes Q = Sinkhorn-Knopp (to SeLaVi's tolerance) of the cosine
    similarities at ``epsilon``; labels = argmax Q; centres = normalised mean of each cluster's members
    (an emptied cluster keeps its centre); until the labels repeat or ``iterations`` rounds.

    Inputs: features N×D (L2-normalised). Outputs: (labels N, confidence N: Q's row-normalised weight of
    the chosen cluster).
    """
    from sklearn.cluster import kmeans_plusplus

    from vidssl.losses import sinkhorn_to_tolerance

    if not 2 <= num_clusters <= len(features):
        raise ValueError(f"balanced_kmeans: num_clusters must be in 2..{len(features)} (the clips), got {num_clusters}")
    x = features.double()
    centres, _ = kmeans_plusplus(x.numpy(), num_clusters, random_state=seed)
    centres = F.normalize(torch.as_tensor(centres), dim=1)
    labels = None
    for _ in range(iterations):
        codes, _ = sinkhorn_to_tolerance(x @ centres.T, epsilon)
        new = codes.argmax(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for k in range(num_clusters):
            members = x[labels == k]
            if len(members):
                centres[k] = F.normalize(members.mean(0), dim=0)
    confidence = codes.gather(1, labels[:, None]).squeeze(1) / codes.sum(1)
    return labels, confidence.float()


def cluster_features(
    paths: list[str], features: Tensor, *, method: str, num_clusters: int, seed: int = 0,
    skipped: dict[str, str] | None = None,
) -> Labelling:
    """One head of ``num_clusters`` clusters over encoder features: ``method`` "kmeans" (scikit-learn,
    10 restarts; confidence: softmax of the cosine similarities to the centres at ε = 0.05, the kernel
    Sinkhorn would use) or "sinkhorn" (`balanced_kmeans`)."""
    if method == "kmeans":
        from sklearn.cluster import KMeans

        if not 2 <= num_clusters <= len(features):
            raise ValueError(f"kmeans: num_clusters must be in 2..{len(features)} (the clips), got {num_clusters}")
        fit = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed).fit(features.double().numpy())
        labels = torch.as_tensor(fit.labels_, dtype=torch.long)
        centres = F.normalize(torch.as_tensor(fit.cluster_centers_), dim=1)
        confidence = ((features.double() @ centres.T) / 0.05).softmax(1).gather(1, labels[:, None]).squeeze(1).float()
    elif method == "sinkhorn":
        labels, confidence = balanced_kmeans(features, num_clusters, seed=seed)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return Labelling(paths=paths, clusters=labels[None], confidence=confidence, embeddings=features,
                     skipped=dict(skipped or {}))


def write_labels_csv(path: str | Path, labelling: Labelling) -> Path:
    """``path,cluster,confidence,cluster_h1,...``: one row per labelled clip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "cluster", "confidence"] + [f"cluster_h{h}" for h in range(1, labelling.num_heads)])
        for n, clip in enumerate(labelling.paths):
            clusters = labelling.clusters[:, n].tolist()
            writer.writerow([clip, clusters[0], f"{float(labelling.confidence[n]):.4f}", *clusters[1:]])
    return path


def cluster_sizes(labelling: Labelling) -> list[dict[str, Any]]:
    """Rows ``cluster, size, mean_confidence`` for head 0, largest cluster first."""
    main = labelling.clusters[0]
    counts = Counter(main.tolist())
    return [
        {"cluster": c, "size": n, "mean_confidence": float(labelling.confidence[main == c].mean())}
        for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def representatives(labelling: Labelling, per_cluster: int) -> dict[int, list[int]]:
    """For each head-0 cluster, the clips (positions in ``labelling.paths``) nearest its centre, the
    mean of its members' normalised embeddings, by cosine similarity; nearest first."""
    main = labelling.clusters[0]
    out = {}
    for c in main.unique().tolist():
        members = (main == c).nonzero().squeeze(1)
        centre = F.normalize(labelling.embeddings[members].mean(0), dim=0)
        similarity = labelling.embeddings[members] @ centre
        out[c] = members[similarity.argsort(descending=True)[:per_cluster]].tolist()
    return out


def middle_frame(root: str | Path, entry_path: str, size: int, backend: str = "av") -> np.ndarray:
    """The middle frame of a video (file or frame folder), short side resized to ``size`` and centre
    cropped: uint8 size×size×3."""
    from vidssl.datasets.decode import VideoReader
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.viz import clip_frames

    path = Path(root) / entry_path
    reader = VideoReader(path, backend="frames" if path.is_dir() else backend)
    try:
        frames = reader.get_frames([reader.num_frames // 2])
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()
    return clip_frames(EvalTransform(size=size, normalize=False)(frames), normalized=False)[0]


CAPTION = 22  # pixels under a thumbnail: two lines of Pillow's default font


def captioned(image: np.ndarray, *lines: str) -> np.ndarray:
    """``image`` (uint8 H×W×3) with a white strip underneath holding ``lines`` (cut to the width)."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    canvas = Image.new("RGB", (width, height + CAPTION), (255, 255, 255))
    canvas.paste(Image.fromarray(np.ascontiguousarray(image)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines[:2]):
        text = line
        while text and draw.textlength(text) > width - 2:
            text = text[:-1]
        draw.text((1, height + 1 + 10 * k), text, fill=(0, 0, 0))
    return np.asarray(canvas)


def cluster_grid_image(
    root: str | Path, labelling: Labelling, *, per_cluster: int = 6, max_clusters: int = 20, size: int = 64,
    backend: str = "av",
) -> np.ndarray:
    """One row per cluster (the ``max_clusters`` largest): its size, then the middle frames of the
    ``per_cluster`` clips nearest its centre, each with its file name and confidence underneath.
    Outputs: uint8 H×W×3."""
    from vidssl.viz import cluster_grid

    reps = representatives(labelling, per_cluster)
    rows, titles = [], []
    for row in cluster_sizes(labelling)[:max_clusters]:
        rows.append([captioned(middle_frame(root, labelling.paths[i], size, backend),
                               f"{Path(labelling.paths[i]).stem}", f"{float(labelling.confidence[i]):.2f}")
                     for i in reps[row["cluster"]]])
        titles.append(f"{row['cluster']}\nn={row['size']}")
    return cluster_grid(rows, titles)
