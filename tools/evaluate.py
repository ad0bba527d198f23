"""Evaluate results or a checkpoint; writes metrics.json and prints a table.

    python tools/evaluate.py metric=davis davis_root=DIR results=RES [split=val] [out=DIR]
    python tools/evaluate.py metric=clusters labels=LABELS.csv manifest=MANIFEST.csv [out=DIR]
    python tools/evaluate.py metric=retrieval|linear checkpoint=CKPT|random encoder=NAME dataset=... [out=DIR]
    python tools/evaluate.py metric=retrieval|linear checkpoint=RGB flow_checkpoint=FLOW dataset.flow_root=DIR ...

This file only reads the config and builds objects; the metrics live in ``vidssl.eval``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl.eval.report import format_table, write_metrics


def _need(cfg: DictConfig, *keys: str) -> None:
    missing = [k for k in keys if cfg.get(k) in (None, "")]
    if missing:
        raise SystemExit(f"metric={cfg.metric} needs {', '.join(k + '=...' for k in missing)}")


def evaluate_davis(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.eval.davis import evaluate_results, format_tables

    _need(cfg, "davis_root", "results")
    out = Path(cfg.out or cfg.results)
    metrics, per_object, _ = evaluate_results(cfg.davis_root, cfg.results, split=cfg.split, out_dir=out)
    return metrics, format_tables(metrics, per_object, cfg.split), out


def evaluate_clusters(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.eval.clustering import evaluate_labels

    _need(cfg, "labels", "manifest")
    metrics, per_cluster = evaluate_labels(cfg.labels, cfg.manifest)
    table = format_table([metrics]) + "\n\n" + format_table(per_cluster)
    return metrics, table, Path(cfg.out or ".")


def evaluate_features(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.checkpoint import load_encoder
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.datasets.sampling import ClipSampler
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.eval.retrieval import evaluate_checkpoint

    if cfg.get("flow_checkpoint"):
        return evaluate_two_stream(cfg)
    encoder = load_encoder(cfg.checkpoint, cfg.encoder)

    def split(name: str) -> VideoDataset:
        return VideoDataset(
            root=cfg.dataset.root,
            entries=instantiate(cfg.dataset, split=name),
            sampler=ClipSampler(num_frames=cfg.num_frames, stride=cfg.stride, random=False),
            transform=EvalTransform(size=cfg.size),
            backend=cfg.backend,
            seed=cfg.seed,
            modality=cfg.dataset.get("modality", "rgb"),
        )

    metrics = evaluate_checkpoint(
        metric=cfg.metric,
        encoder=encoder,
        train_set=split(cfg.train_split),
        test_set=split(cfg.test_split),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=cfg.device,
    )
    metrics = {"checkpoint": str(cfg.checkpoint), **metrics}
    return metrics, format_table([metrics]), Path(cfg.out or ".")


def evaluate_two_stream(cfg: DictConfig) -> tuple[dict, str, Path]:
    """RGB (`checkpoint`), flow (`flow_checkpoint`, on `dataset.flow_root`) and their fusion R+F."""
    from vidssl.checkpoint import load_encoder
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.datasets.flow import FlowAligned
    from vidssl.datasets.sampling import ClipSampler
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.eval.two_stream import evaluate_two_stream as evaluate

    def split(name: str, modality: str) -> VideoDataset:
        sampler = ClipSampler(num_frames=cfg.num_frames, stride=cfg.stride, random=False)
        return VideoDataset(
            root=cfg.dataset.root, entries=instantiate(cfg.dataset, split=name, modality=modality),
            sampler=sampler if modality == "flow" else FlowAligned(sampler),  # the same frames in both
            transform=EvalTransform(size=cfg.size), backend=cfg.backend, seed=cfg.seed, modality=modality,
        )

    metrics = evaluate(
        metric=cfg.metric,
        rgb_encoder=load_encoder(cfg.checkpoint, cfg.encoder),
        flow_encoder=load_encoder(cfg.flow_checkpoint, cfg.encoder),
        rgb_sets=(split(cfg.train_split, "rgb"), split(cfg.test_split, "rgb")),
        flow_sets=(split(cfg.train_split, "flow"), split(cfg.test_split, "flow")),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device,
    )
    metrics = {"checkpoint": str(cfg.checkpoint), "flow_checkpoint": str(cfg.flow_checkpoint), **metrics}
    return metrics, format_table([metrics]), Path(cfg.out or ".")


EVALUATIONS = {
    "davis": evaluate_davis,
    "clusters": evaluate_clusters,
    "retrieval": evaluate_features,
    "linear": evaluate_features,
}


@hydra.main(config_path="../configs", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.metric not in EVALUATIONS:
        raise SystemExit(f"metric={cfg.metric!r} is not one of {sorted(EVALUATIONS)}")
    metrics, table, out = EVALUATIONS[cfg.metric](cfg)
    path = write_metrics(out, metrics, table)
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
