"""Evaluate results or a checkpoint; writes OUT/metrics.json and OUT/metrics.txt and prints a table.

    python tools/evaluate.py metric=davis davis_root=DIR results=RES out=DIR [split=val]
    python tools/evaluate.py metric=ytvos|mose root=DIR results=RES out=DIR [vos_split=valid] [seen_meta=train/meta.json]
    python tools/evaluate.py metric=jhmdb root=DIR results=RES out=DIR [jhmdb_split=1] [filelist=FILE]
    python tools/evaluate.py metric=vip root=DIR results=RES out=DIR [split=val]
    python tools/evaluate.py metric=clusters labels=LABELS.csv manifest=MANIFEST.csv out=DIR
    python tools/evaluate.py metric=retrieval|linear checkpoint=CKPT|random encoder=NAME dataset=... out=DIR
        [ks=[1,5,10,20]] [readout=encoder|context num_seq=N]
    python tools/evaluate.py metric=retrieval|linear checkpoint=RGB flow_checkpoint=FLOW dataset.flow_root=DIR ...
    python tools/evaluate.py metric=finetune checkpoint=CKPT|random encoder=NAME dataset=... out=DIR [finetune.steps=N]
    python tools/evaluate.py metric=finetune checkpoint=RGB flow_checkpoint=FLOW dataset.flow_root=DIR ...
    python tools/evaluate.py metric=attentive_probe checkpoint=CKPT|random encoder=NAME dataset=... out=DIR
        [probe.segments=2 probe.views=3 probe.epochs=20]

`out=` is required (created if missing), so a second evaluation never overwrites the first. A video that
cannot be read is dropped from its split, logged with its reason, and counted (``train_used``,
``train_dropped``, ``test_used``, ``test_dropped`` in metrics.json); it is never replaced by another clip.

This file only reads the config and builds objects; the metrics live in ``vidssl.eval``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.app.errors import check_overrides, one_line_errors
from vidssl.app.threads import set_cpu_threads
from vidssl.configs import CONFIG_DIR
from vidssl.eval.report import format_table, write_metrics


def _need(cfg: DictConfig, *keys: str) -> None:
    missing = [k for k in keys if cfg.get(k) in (None, "")]
    if missing:
        raise SystemExit(f"metric={cfg.metric} needs {', '.join(k + '=...' for k in missing)}")


def evaluate_davis(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.eval.davis import evaluate_results, format_tables

    _need(cfg, "davis_root", "results")
    out = Path(cfg.out)
    metrics, per_object, _ = evaluate_results(cfg.davis_root, cfg.results, split=cfg.split, out_dir=out)
    return metrics, format_tables(metrics, per_object, cfg.split), out


def evaluate_vos(cfg: DictConfig) -> tuple[dict, str, Path]:
    """Local J&F (seen/unseen with seen_meta, or ROOT/train/meta.json when it exists) and the layout check."""
    from vidssl.eval.vos import check_submission, evaluate_vos, format_vos, seen_categories

    _need(cfg, "root", "results")
    seen_meta = cfg.seen_meta or (Path(cfg.root) / "train" / cfg.meta)
    seen = seen_categories(seen_meta) if Path(seen_meta).is_file() and cfg.vos_split != "train" else None
    metrics, rows = evaluate_vos(cfg.root, cfg.results, cfg.vos_split, meta=cfg.meta, seen=seen)
    problems = check_submission(cfg.root, cfg.results, cfg.vos_split, meta=cfg.meta)
    metrics["layout_problems"] = len(problems)
    table = format_vos(metrics, rows) + "".join(f"\nlayout: {p}" for p in problems[:20])
    return {**metrics, "per_object": rows}, table, Path(cfg.out)


def evaluate_jhmdb(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.eval.jhmdb import evaluate_jhmdb as evaluate

    _need(cfg, "results")
    if cfg.root in (None, "") and cfg.filelist in (None, ""):
        raise SystemExit("metric=jhmdb needs root=DIR (the JHMDB release) or filelist=FILE")
    metrics, table = evaluate(cfg.results, cfg.root, split=cfg.jhmdb_split, filelist=cfg.filelist)
    return metrics, table, Path(cfg.out)


def evaluate_vip(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.eval.vip import evaluate_vip as evaluate

    _need(cfg, "root", "results")
    metrics, table = evaluate(cfg.root, cfg.results, cfg.split)
    return metrics, table, Path(cfg.out)


def evaluate_clusters(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.eval.clustering import evaluate_labels

    from vidssl.eval.cluster_report import class_names, cluster_confusion, write_confusion

    _need(cfg, "labels", "manifest")
    metrics, per_cluster = evaluate_labels(cfg.labels, cfg.manifest)
    counts, clusters, classes, missing = cluster_confusion(cfg.labels, cfg.manifest)
    names = class_names(cfg.manifest)
    for row in per_cluster:  # the majority class by name, beside its index
        row["majority_class"] = names.get(row["majority_label"], str(row["majority_label"]))
    csv_path, png_path = write_confusion(cfg.out, counts, clusters, classes)
    metrics["missing_from_labels"] = len(missing)
    table = format_table([metrics]) + "\n\n" + format_table(per_cluster)
    table += f"\n\nconfusion matrix (cluster × class): {csv_path}, {png_path}"
    if missing:
        table += f"\n{len(missing)} labelled manifest clips are missing from {cfg.labels}, e.g. {missing[:5]}"
    return metrics, table, Path(cfg.out)


def _eval_split(cfg: DictConfig, name: str, sampler, transform, modality: str | None = None):
    """The `name` split of `cfg.dataset`, never substituting a bad file. `modality` (two streams) overrides
    `dataset.modality`; then an RGB split's sampler is wrapped in `FlowAligned`, so both draw the same frames."""
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.datasets.flow import FlowAligned

    options = {}
    if modality is not None:
        options["modality"] = modality
        sampler = FlowAligned(sampler) if modality == "rgb" else sampler
    return VideoDataset(root=cfg.dataset.root, entries=instantiate(cfg.dataset, split=name, **options),
                        sampler=sampler, transform=transform, backend=cfg.backend, seed=cfg.seed, substitute=False)


def evaluate_features(cfg: DictConfig) -> tuple[dict, str, Path]:
    from vidssl.datasets.sampling import ClipSampler
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.eval.clip_features import as_clip_encoder, is_frame_encoder
    from vidssl.eval.finetune import READOUTS, context_readout, load_trained
    from vidssl.eval.retrieval import check_ks, evaluate_checkpoint

    if cfg.get("flow_checkpoint"):
        if cfg.readout != "encoder":
            raise SystemExit(f"readout={cfg.readout} does not apply with flow_checkpoint: the two streams are "
                             "compared on their pooled encoder features (readout=encoder)")
        return evaluate_two_stream(cfg)
    if cfg.readout not in READOUTS:
        raise SystemExit(f"readout={cfg.readout!r} is not one of {list(READOUTS)}")

    def split(name: str):
        return _eval_split(cfg, name, ClipSampler(num_frames=cfg.num_frames, stride=cfg.stride, random=False),
                           EvalTransform(size=cfg.size))

    train_set = split(cfg.train_split)
    if cfg.metric == "retrieval":
        check_ks(list(cfg.ks), len(train_set))  # before loading weights or extracting any feature
    encoder, checkpoint = load_trained(cfg.checkpoint, cfg.encoder)
    if is_frame_encoder(encoder):
        if cfg.readout != "encoder":
            raise SystemExit(f"error: readout={cfg.readout} needs a clip encoder with a context network (DPC); "
                             f"{cfg.checkpoint} has a frame encoder: use readout=encoder")
        encoder = as_clip_encoder(encoder)  # CRW, MAST: each frame's features, averaged over the clip
    from vidssl.app.used import describe, encoder_facts

    facts = encoder_facts(encoder, source=f"checkpoint {cfg.checkpoint}", layer=f"pooled {cfg.readout}",
                          input_size=f"{cfg.num_frames}x{cfg.size}x{cfg.size} (stride {cfg.stride})")
    print(f"evaluate: {describe(facts)}", flush=True)
    if cfg.readout == "context":
        encoder = context_readout(encoder, cfg.num_seq, checkpoint)
    metrics = evaluate_checkpoint(
        metric=cfg.metric,
        encoder=encoder,
        train_set=train_set,
        test_set=split(cfg.test_split),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=cfg.device,
        ks=list(cfg.ks),
    )
    metrics = {"checkpoint": str(cfg.checkpoint), "readout": cfg.readout, **facts, **metrics}
    return metrics, format_table([metrics]), Path(cfg.out)


def evaluate_finetune(cfg: DictConfig) -> tuple[dict, str, Path]:
    """Fine-tune `checkpoint` (on `dataset.modality`), or with `flow_checkpoint` an RGB and a flow network
    each on its own stream, tested alone and fused (R+F: their softmax averaged per video)."""
    import torch

    from vidssl.datasets.sampling import ClipSampler
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.eval.finetune import (
        ContextClassifier,
        PositionedSampler,
        clip_positions,
        context_readout,
        finetune,
        load_trained,
    )
    from vidssl.app.used import announce
    from vidssl.eval.two_stream import finetune_two_stream

    ft = cfg.finetune

    def sets(modality: str | None = None) -> tuple:
        train = _eval_split(cfg, cfg.train_split, ClipSampler(num_frames=cfg.num_frames, stride=cfg.stride),
                            instantiate(ft.transform, size=cfg.size), modality)
        tests = [_eval_split(cfg, cfg.test_split, PositionedSampler(cfg.num_frames, cfg.stride, position),
                             EvalTransform(size=cfg.size), modality) for position in clip_positions(ft.test_clips)]
        return train, tests

    used = []  # each network's facts, said before it trains: RGB, then flow

    def classifier(checkpoint: str, num_classes: int, stream: str = "") -> ContextClassifier:
        torch.manual_seed(cfg.seed)  # the new layers' initialisation (a random ConvGRU has its own fixed seed)
        encoder, trained = load_trained(checkpoint, cfg.encoder, running_stats=True)
        used.append(announce(f"evaluate{stream}", encoder, source=f"checkpoint {checkpoint}",
                             layer=f"context (ConvGRU over {cfg.num_seq} blocks), all fine-tuned",
                             input_size=f"{cfg.num_frames}x{cfg.size}x{cfg.size} (stride {cfg.stride})"))
        return ContextClassifier(context_readout(encoder, cfg.num_seq, trained),
                                 num_classes=num_classes, dropout=ft.dropout)

    two_stream = bool(cfg.get("flow_checkpoint"))
    train_set, test_sets = sets("rgb" if two_stream else None)
    labels = [e.label for e in train_set.entries + test_sets[0].entries]
    if min(labels) < 0:
        raise SystemExit(f"metric=finetune needs labelled videos; {cfg.dataset.root} has unlabelled ones")
    options = dict(steps=ft.steps, batch_size=cfg.batch_size, lr=ft.lr, weight_decay=ft.weight_decay,
                   num_workers=cfg.num_workers, device=cfg.device, seed=cfg.seed)
    if two_stream:
        metrics = finetune_two_stream(rgb_model=classifier(cfg.checkpoint, max(labels) + 1),
                                      flow_model=classifier(cfg.flow_checkpoint, max(labels) + 1, " (flow)"),
                                      rgb_sets=(train_set, test_sets), flow_sets=sets("flow"), **options)
        metrics = {"checkpoint": str(cfg.checkpoint), "flow_checkpoint": str(cfg.flow_checkpoint),
                   "test_clips": ft.test_clips, **used[0], **{f"flow_{k}": v for k, v in used[1].items()}, **metrics}
    else:
        metrics = finetune(classifier(cfg.checkpoint, max(labels) + 1), train_set, test_sets, **options)
        metrics = {"checkpoint": str(cfg.checkpoint), "test_clips": ft.test_clips, **used[0], **metrics}
    return metrics, format_table([metrics]), Path(cfg.out)


def evaluate_two_stream(cfg: DictConfig) -> tuple[dict, str, Path]:
    """RGB (`checkpoint`), flow (`flow_checkpoint`, on `dataset.flow_root`) and their fusion R+F."""
    from vidssl.run import load_encoder
    from vidssl.datasets.sampling import ClipSampler
    from vidssl.datasets.transforms import EvalTransform
    from vidssl.eval.retrieval import check_ks
    from vidssl.eval.two_stream import evaluate_two_stream as evaluate

    def split(name: str, modality: str):
        sampler = ClipSampler(num_frames=cfg.num_frames, stride=cfg.stride, random=False)
        return _eval_split(cfg, name, sampler, EvalTransform(size=cfg.size), modality)

    rgb_train = split(cfg.train_split, "rgb")
    if cfg.metric == "retrieval":
        check_ks(list(cfg.ks), len(rgb_train))  # before loading weights or extracting any feature
    metrics = evaluate(
        metric=cfg.metric,
        rgb_encoder=load_encoder(cfg.checkpoint, cfg.encoder),
        flow_encoder=load_encoder(cfg.flow_checkpoint, cfg.encoder),
        rgb_sets=(rgb_train, split(cfg.test_split, "rgb")),
        flow_sets=(split(cfg.train_split, "flow"), split(cfg.test_split, "flow")),
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device, ks=list(cfg.ks),
    )
    metrics = {"checkpoint": str(cfg.checkpoint), "flow_checkpoint": str(cfg.flow_checkpoint), **metrics}
    return metrics, format_table([metrics]), Path(cfg.out)


def evaluate_attentive_probe(cfg: DictConfig) -> tuple[dict, str, Path]:
    """V-JEPA's frozen attentive probe: the official lr × wd grid over every segment and view of each video;
    the val-picked figure (the official script's) and the clean one (picked on a held-out part of train)."""
    import torch

    from vidssl.run import load_encoder
    from vidssl.eval.attentive_probe import ViewCrop, attentive_probe, checked_holdout_split, extract_views
    from vidssl.app.used import announce
    from vidssl.eval.finetune import PositionedSampler, clip_positions

    p = cfg.probe

    def views_of(split: str) -> tuple:
        datasets = [[_eval_split(cfg, split, PositionedSampler(cfg.num_frames, cfg.stride, position),
                                 ViewCrop(cfg.size, view, p.views)) for view in range(p.views)]
                    for position in clip_positions(p.segments)]
        views, labels, dropped = extract_views(encoder, datasets, batch_size=cfg.batch_size,
                                               num_workers=cfg.num_workers, device=cfg.device)
        return views, labels, dropped

    # the labels the clean figure needs, before any video is decoded
    listed = torch.tensor([e.label for e in instantiate(cfg.dataset, split=cfg.train_split)])
    if listed.numel() and listed.min() >= 0:
        checked_holdout_split(listed, p.holdout, cfg.seed)
    encoder = load_encoder(cfg.checkpoint, cfg.encoder)
    facts = announce("evaluate", encoder, source=f"checkpoint {cfg.checkpoint}",
                     layer=f"{'tokens' if hasattr(encoder, 'tokens') else 'output map as tokens'}, frozen",
                     input_size=f"{cfg.num_frames}x{cfg.size}x{cfg.size} (stride {cfg.stride}), "
                                f"{p.segments} segments x {p.views} views")
    train_views, train_labels, train_dropped = views_of(cfg.train_split)
    test_views, test_labels, test_dropped = views_of(cfg.test_split)
    if min(train_labels.min(), test_labels.min()) < 0:
        raise SystemExit(f"metric=attentive_probe needs labelled videos; {cfg.dataset.root} has unlabelled ones")
    result = attentive_probe((train_views, train_labels), (test_views, test_labels),
                             num_classes=int(max(train_labels.max(), test_labels.max())) + 1, holdout=p.holdout,
                             lrs=list(p.lrs), wds=list(p.wds), epochs=p.epochs, batch_size=p.batch_size,
                             num_heads=p.num_heads, depth=p.depth, seed=cfg.seed, device=cfg.device)
    grid = result.pop("grid")
    metrics = {"checkpoint": str(cfg.checkpoint), "segments": p.segments, "views": p.views, **facts, **result,
               "train_used": int(train_labels.numel()), "train_dropped": len(train_dropped),
               "test_used": int(test_labels.numel()), "test_dropped": len(test_dropped)}
    table = (format_table([metrics]) + "\n\nval_picked_top1 is the official figure: the best of the grid on "
             f"{cfg.test_split}, the split it reports. clean_top1 is picked on {result['holdout_videos']} held-out "
             f"{cfg.train_split} videos.\n\n" + format_table(grid))
    return {**metrics, "grid": grid}, table, Path(cfg.out)


EVALUATIONS = {
    "davis": evaluate_davis,
    "ytvos": evaluate_vos,
    "mose": evaluate_vos,
    "jhmdb": evaluate_jhmdb,
    "vip": evaluate_vip,
    "clusters": evaluate_clusters,
    "retrieval": evaluate_features,
    "linear": evaluate_features,
    "finetune": evaluate_finetune,
    "attentive_probe": evaluate_attentive_probe,
}


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
@one_line_errors
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    if cfg.metric not in EVALUATIONS:
        raise SystemExit(f"metric={cfg.metric!r} is not one of {sorted(EVALUATIONS)}")
    _need(cfg, "out")
    threads = set_cpu_threads(requested=cfg.get("threads"), device=cfg.device)
    print(f"evaluate metric={cfg.metric} on {cfg.device}, {threads.describe()}", flush=True)
    metrics, table, out = EVALUATIONS[cfg.metric](cfg)
    metrics = {**metrics, **threads.as_dict()}
    path = write_metrics(out, metrics, table)
    print(table)
    print(f"wrote {path}")


def main() -> None:
    """The command line (``sys.argv``)."""
    check_overrides("evaluate", doc=__doc__)  # a wrong key: one line, before Hydra starts
    run()


if __name__ == "__main__":
    main()
