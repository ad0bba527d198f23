"""Propagate first-frame DAVIS annotations through every sequence of a split.

    python tools/propagate.py davis_root=DIR out=RES features=pixels|random|checkpoint [checkpoint=CKPT] [split=val]
        [n_context=20] [topk=10] [radius=12] [temperature=0.07] [restrict_first=false] [encoder=NAME]

Writes DAVIS palette PNGs to ``RES/<sequence>/<frame>.png``; score them with
``python tools/evaluate.py metric=davis davis_root=DIR results=RES``. All logic is in ``vidssl.eval``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidssl.eval.features import build_feature_fn
from vidssl.eval.propagate import propagate_dataset


@hydra.main(config_path="../configs", config_name="propagate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    feature_fn = build_feature_fn(cfg.features, encoder_cfg=cfg.encoder, checkpoint=cfg.checkpoint,
                                  stride=cfg.stride, clip_len=cfg.clip_len, device=cfg.device)
    folders = propagate_dataset(
        cfg.davis_root, cfg.out, feature_fn, split=cfg.split, resolution=cfg.resolution,
        n_context=cfg.n_context, topk=cfg.topk, radius=cfg.radius, temperature=cfg.temperature,
        restrict_first=cfg.restrict_first, tile=cfg.tile,
    )
    print(f"wrote {len(folders)} sequences to {cfg.out}")


if __name__ == "__main__":
    main()
