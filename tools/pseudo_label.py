"""Pseudo-label every clip of a dataset with a trained SeLaVi task (or its random-init baseline).

    python tools/pseudo_label.py checkpoint=CKPT|random task=selavi dataset=... [dataset.root=DIR] out=LABELS.csv

Writes LABELS.csv (path, cluster, confidence, cluster_h1, ...), prints the cluster sizes, and writes
LABELS_grid.png beside it: the clips nearest each cluster's centre. A checkpoint brings its own task
config (``checkpoint["config"]["task"]``); ``task=`` matters only for ``checkpoint=random``.
All logic lives in ``vidssl.pseudo_label``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vidssl.eval.report import format_table
from vidssl.pseudo_label import (
    cluster_grid_image,
    cluster_sizes,
    label_clips,
    labelling_dataset,
    random_task,
    task_from_checkpoint,
    write_labels_csv,
)
from vidssl.viz import save_png


@hydra.main(config_path="../configs", config_name="pseudo_label", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if str(cfg.checkpoint) == "random":
        task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
        task = random_task(task_cfg)
    else:
        task, task_cfg = task_from_checkpoint(cfg.checkpoint)
    with_audio = getattr(task, "audio_encoder", None) is not None
    entries = instantiate(cfg.dataset, split=cfg.split)
    dataset = labelling_dataset(cfg.dataset.root, entries, task_cfg["data"], with_audio=with_audio,
                                backend=cfg.backend, seed=cfg.seed)
    labelling = label_clips(task, dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            device=cfg.device, allow_video_only=cfg.allow_video_only,
                            equipartition=cfg.equipartition,
                            modalities=list(cfg.modalities) if cfg.modalities else None)

    out = write_labels_csv(cfg.out, labelling)
    print(format_table(cluster_sizes(labelling)))
    print(f"{len(labelling.paths)} clips in {len(set(labelling.clusters[0].tolist()))} clusters "
          f"(head 0 of {labelling.num_heads}); wrote {out}")
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


if __name__ == "__main__":
    main()
