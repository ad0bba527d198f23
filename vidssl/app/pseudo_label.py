"""Pseudo-label every clip of a dataset, from any checkpoint (or its random-init baseline).

    python tools/pseudo_label.py checkpoint=CKPT|random task=selavi dataset=... [dataset.root=DIR] out=LABELS.csv
    python tools/pseudo_label.py method=kmeans|sinkhorn num_clusters=K checkpoint=CKPT|random dataset=... out=...

``method=selavi`` (default) labels with a SeLaVi checkpoint's heads; ``method=kmeans`` (scikit-learn) and
``method=sinkhorn`` (balanced k-means by optimal transport) cluster the pooled encoder features of any
checkpoint into ``num_clusters``. Writes LABELS.csv (path, cluster, confidence[, cluster_h1, ...]),
prints the cluster sizes, and writes LABELS_grid.png beside it: the clips nearest each cluster's centre.
A checkpoint brings its own task config (its clip layout) and encoder; ``task=`` and ``encoder=`` matter only
for ``checkpoint=random`` (and for a checkpoint saved without them).
All logic lives in ``vidssl.eval.pseudo_label``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vidssl.app.cli import explain_instantiation_errors
from vidssl.app.errors import check_overrides, one_line_errors
from vidssl.app.threads import set_cpu_threads
from vidssl.configs import CONFIG_DIR
from vidssl.run import Checkpoint
from vidssl.eval.clip_features import as_clip_encoder
from vidssl.eval.report import format_table
from vidssl.eval.pseudo_label import (
    METHODS,
    cluster_features,
    cluster_grid_image,
    cluster_sizes,
    encoder_features,
    label_clips,
    labelling_dataset,
    write_labels_csv,
)
from vidssl.viz import save_png


@hydra.main(config_path=str(CONFIG_DIR), config_name="pseudo_label", version_base="1.3")
@one_line_errors
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    # the mandatory keys first: nothing is decoded or loaded for a command that cannot finish
    missing = [key for key in ("checkpoint", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise SystemExit(f"error: pseudo_label.py needs {' and '.join(k + '=...' for k in missing)} "
                         "(checkpoint=CKPT|random, out=LABELS.csv)")
    if cfg.method not in METHODS:
        raise SystemExit(f"method={cfg.method!r} is not one of {', '.join(METHODS)}")
    threads = set_cpu_threads(requested=cfg.get("threads"), device=cfg.device)
    print(f"pseudo_label method={cfg.method} on {cfg.device}, {threads.describe()}", flush=True)
    entries = instantiate(cfg.dataset, split=cfg.split)
    if cfg.num_clusters is not None and int(cfg.num_clusters) > len(entries):
        raise SystemExit(f"error: num_clusters={cfg.num_clusters} exceeds the {len(entries)} clips of "
                         f"{cfg.dataset.root}")
    loader = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device)
    # Opened once: the task or encoder, and the clip layout, all come from it.
    checkpoint = Checkpoint.open(cfg.checkpoint, encoder=OmegaConf.to_container(cfg.encoder, resolve=True),
                                 task=OmegaConf.to_container(cfg.task, resolve=True))
    if cfg.method == "selavi":
        if cfg.num_clusters is not None:
            raise SystemExit("num_clusters is for method=kmeans|sinkhorn; a SeLaVi task has its own heads")
        if "cluster_heads" not in checkpoint.exports.capabilities:
            raise SystemExit(f"method=selavi labels with a task's own cluster heads; {cfg.checkpoint} has none "
                             f"(its task: {(checkpoint.task_config or {}).get('_target_')}); use method=kmeans|sinkhorn")
        task = checkpoint.build_task()
        with_audio = getattr(task, "audio_encoder", None) is not None
        dataset = labelling_dataset(cfg.dataset.root, entries, checkpoint.data_config, with_audio=with_audio,
                                    backend=cfg.backend, seed=cfg.seed)
        labelling = label_clips(task, dataset, allow_video_only=cfg.allow_video_only,
                                equipartition=cfg.equipartition,
                                modalities=list(cfg.modalities) if cfg.modalities else None, **loader)
    else:
        if cfg.num_clusters is None:
            raise SystemExit(f"method={cfg.method} needs num_clusters=K")
        # the head options mean nothing to clustering features: refused rather than ignored
        selavi_only = {"allow_video_only": True, "equipartition": False, "modalities": None}
        set_here = [key for key, default in selavi_only.items() if cfg[key] != default]
        if set_here:
            raise SystemExit(f"{', '.join(set_here)} apply to method=selavi (a task's heads), not to "
                             f"method={cfg.method}")
        # a frame encoder (CRW, MAST): its frames' features averaged over the clip
        encoder = as_clip_encoder(checkpoint.build_encoder())
        from vidssl.app.used import describe, encoder_facts

        data = checkpoint.data_config or {}
        size = (data.get("transform") or {}).get("size")
        frames = (data.get("sampler") or {}).get("num_frames")
        facts = encoder_facts(encoder, source=f"checkpoint {cfg.checkpoint}", layer="pooled output",
                              input_size=f"{frames}x{size}x{size}")
        print(f"pseudo_label: {describe(facts)}", flush=True)
        dataset = labelling_dataset(cfg.dataset.root, entries, checkpoint.data_config, with_audio=False,
                                    backend=cfg.backend, seed=cfg.seed)
        paths, features, skipped = encoder_features(encoder, dataset, **loader)
        labelling = cluster_features(paths, features, method=cfg.method, num_clusters=int(cfg.num_clusters),
                                     seed=cfg.seed, skipped=skipped)

    out = write_labels_csv(cfg.out, labelling)
    print(format_table(cluster_sizes(labelling)))
    print(f"{len(labelling.paths)} clips in {len(set(labelling.clusters[0].tolist()))} clusters "
          f"(head 0 of {labelling.num_heads}, method={cfg.method}); wrote {out}")
    if labelling.video_only:
        print(f"{len(labelling.video_only)} clips have no sound and were labelled from video alone, "
              f"e.g. {labelling.video_only[:3]}")
    if labelling.skipped:
        print(f"{len(labelling.skipped)} clips were not labelled:")
        for path, reason in list(labelling.skipped.items())[:10]:
            print(f"  {path}: {reason}")
    grid = cluster_grid_image(cfg.dataset.root, labelling, per_cluster=cfg.grid_per_cluster,
                              max_clusters=cfg.grid_clusters, size=cfg.grid_size, backend=cfg.backend)
    print(f"wrote {save_png(Path(out).with_name(Path(out).stem + '_grid.png'), grid)}")


def main() -> None:
    """The command line (``sys.argv``)."""
    check_overrides("pseudo_label", doc=__doc__)  # a wrong key: one line, before Hydra starts
    run()


if __name__ == "__main__":
    main()
