"""Self-supervised pretraining: build the task, dataset and trainer from the config tree, then train.

    python tools/pretrain.py task=simclr dataset=synthetic dataset.root=DIR trainer.max_steps=N \
        trainer.out_dir=RUN [trainer.checkpoint_every=K]
    torchrun --nproc_per_node=2 tools/pretrain.py ...        # the same, distributed (DDP)

Rerunning the same command with the same trainer.out_dir resumes from RUN/checkpoints/last.pt.
Everything is built (and every config key checked) before the first step runs.
"""

from __future__ import annotations

import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vidssl.cli import explain_instantiation_errors


@hydra.main(version_base="1.3", config_path="../configs", config_name="pretrain")
@explain_instantiation_errors
def main(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"missing mandatory values: {', '.join(missing)} (set them, e.g. {missing[0]}=...)")
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.engine import seed_everything

    # Cheap and most often mistyped first: trainer arguments, then the dataset listing, then the model.
    trainer = instantiate(cfg.trainer)
    optimizer_factory = instantiate(cfg.optim)
    dataset = VideoDataset(
        root=cfg.dataset.root,
        entries=instantiate(cfg.dataset),
        # _convert_="all": plain dicts/lists, so OmegaConf never tries to wrap the built dataclass objects.
        **instantiate(cfg.task.data, _convert_="all"),
        backend=cfg.loader.backend,
        decode_threads=cfg.loader.decode_threads,
        index=cfg.loader.index,
        require_audio=cfg.loader.require_audio,
        seed=cfg.trainer.seed,
        modality=cfg.dataset.get("modality", "rgb"),
    )
    # Seed right before building the model, so the initial weights depend only on trainer.seed.
    seed_everything(cfg.trainer.seed)
    task = instantiate(cfg.task.model)
    summary = trainer.fit(task, dataset, optimizer_factory, config=OmegaConf.to_container(cfg, resolve=True))
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; rerun the same command to resume", file=sys.stderr)


if __name__ == "__main__":
    main()
