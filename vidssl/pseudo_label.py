"""Pseudo-labelling a dataset with a trained (or random-init) SeLaVi task: the library behind
``python tools/pseudo_label.py checkpoint=CKPT|random task=selavi dataset=... out=LABELS.csv``.

Each clip is seen once through a deterministic view (the centred clip of the task's layout, resized and
centre-cropped); every head of the task predicts a cluster from the combined prediction of video and
audio (clips without sound: from the video heads alone, when allowed). The output is a CSV with one row
per clip — ``path`` (as in the manifest), ``cluster`` (head 0), ``confidence`` (head 0's probability
of that cluster), ``cluster_h1``… (further heads) — a table of cluster sizes, and a PNG grid of the
clips nearest each cluster's centre.
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
    """Rebuild the task a checkpoint was trained with (its ``config["task"]``) and load its weights.

    Outputs: (task in eval mode on the CPU, the task config ``{"model": ..., "data": ...}`` as a dict).
    """
    from hydra.utils import instantiate

    from vidssl.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    task_cfg = (state.get("config") or {}).get("task")
    if not task_cfg or "model" not in task_cfg:
        raise ValueError(f"{checkpoint}: the checkpoint has no config['task']['model'] to rebuild the task from")
    task = instantiate(task_cfg["model"])
    try:
        task.load_state_dict(state["model"])
    except RuntimeError as err:
        raise RuntimeError(f"{checkpoint}: the saved weights do not fit the saved task config: {err}") from err
    return task.eval(), task_cfg


def random_task(task_cfg: Mapping[str, Any]) -> nn.Module:
    """The task of ``task_cfg`` (``{"model": ..., "data": ...}``) at random initialisation with the fixed
    seed every ``checkpoint=random`` baseline uses, in eval mode."""
    from hydra.utils import instantiate

    from vidssl.checkpoint import RANDOM_INIT_SEED

    with torch.random.fork_rng(devices=[]):  # the fixed seed must not disturb the caller's stream
        torch.manual_seed(RANDOM_INIT_SEED)
        return instantiate(task_cfg["model"]).eval()


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


@torch.no_grad()
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
    Sinkhorn-Knopp over the whole dataset (balanced clusters, as the training labels are) instead of
    each clip's argmax. Files the dataset cannot decode are skipped, not replaced.
    """
    task = task.to(device).eval()
    video_only_ok = allow_video_only and getattr(task, "can_label_video_only", False)
    audio_needed = modalities is not None and "video" not in modalities
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    found: dict[int, tuple[Tensor, list[Tensor], bool]] = {}
    for batch in loader:
        has_audio = batch.pop("has_audio", None)
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
        if has_audio is not None and video_only_ok and modalities is None:
            inputs["has_audio"] = has_audio.to(device)
        embedding, log_probs = task.predict(inputs, modalities)
        embedding = F.normalize(embedding.float(), dim=1).cpu()
        for row, index in enumerate(batch["index"].tolist()):
            # A bad file makes the dataset load another clip in its place: keep each clip once.
            if index not in found:
                silent = has_audio is not None and not bool(has_audio[row])
                found[index] = (embedding[row], [lp[row].cpu() for lp in log_probs], silent)

    paths, embeddings, scores, video_only, skipped = [], [], [], [], {}
    for index, entry in enumerate(dataset.entries):
        if index not in found:
            skipped[entry.path] = dataset.failures.get(entry.path, "could not be decoded")
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


def cluster_grid_image(
    root: str | Path, labelling: Labelling, *, per_cluster: int = 6, max_clusters: int = 20, size: int = 64,
    backend: str = "av",
) -> np.ndarray:
    """One row per cluster (the ``max_clusters`` largest): its size, then the middle frames of the
    ``per_cluster`` clips nearest its centre. Outputs: uint8 H×W×3."""
    from vidssl.viz import cluster_grid

    reps = representatives(labelling, per_cluster)
    rows, titles = [], []
    for row in cluster_sizes(labelling)[:max_clusters]:
        rows.append([middle_frame(root, labelling.paths[i], size, backend) for i in reps[row["cluster"]]])
        titles.append(f"{row['cluster']}\nn={row['size']}")
    return cluster_grid(rows, titles)
