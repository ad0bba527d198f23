"""Propagate first-frame masks: every sequence of a DAVIS split, or one video of your own.

    python tools/propagate.py davis_root=DIR out=RES features=pixels|random|checkpoint [checkpoint=CKPT] [split=val]
    python tools/propagate.py video=clip.mp4 mask=first.png out=DIR [features=...] [checkpoint=CKPT] [short_side=480]

Protocol options (defaults = videowalk's DAVIS evaluation): n_context=20 topk=10 radius=12
temperature=0.05 window=circle pad_first=true downsample=bilinear restrict_first=false layer=auto.

DAVIS: writes palette PNGs to ``RES/<sequence>/<frame>.png``; score them with
``python tools/evaluate.py metric=davis davis_root=DIR results=RES``. A video: writes ``DIR/masks/*.png``,
``DIR/overlay.mp4`` and ``DIR/overlay.gif``. All logic is in ``vidssl.eval``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.eval.features import build_feature_fn
from vidssl.eval.propagate import propagate_dataset
from vidssl.eval.track import track_video

PROTOCOL = ("n_context", "topk", "radius", "temperature", "restrict_first", "window", "pad_first", "downsample", "tile")


@hydra.main(config_path="../configs", config_name="propagate", version_base="1.3")
@explain_instantiation_errors
def main(cfg: DictConfig) -> None:
    if (cfg.davis_root is None) == (cfg.video is None):
        raise SystemExit("give either davis_root=DIR (a DAVIS layout) or video=FILE mask=PNG (one video)")
    if cfg.video is not None and cfg.mask is None:
        raise SystemExit("video=FILE needs mask=PNG: the first frame's mask")
    feature_fn = build_feature_fn(cfg.features, encoder_cfg=cfg.encoder, checkpoint=cfg.checkpoint,
                                  stride=cfg.stride, clip_len=cfg.clip_len, layer=cfg.layer, device=cfg.device)
    protocol = {k: cfg[k] for k in PROTOCOL}
    if cfg.video is not None:
        result = track_video(cfg.video, cfg.mask, cfg.out, feature_fn, short_side=cfg.short_side,
                             max_frames=cfg.max_frames, fps=cfg.fps, **protocol)
        print(f"tracked {result['objects']} object(s) through {result['frames']} frames: {result['masks']}/, "
              f"{result['mp4']}, {result['gif']}")
        return
    folders = propagate_dataset(cfg.davis_root, cfg.out, feature_fn, split=cfg.split, resolution=cfg.resolution,
                                **protocol)
    print(f"wrote {len(folders)} sequences to {cfg.out}")


if __name__ == "__main__":
    main()
