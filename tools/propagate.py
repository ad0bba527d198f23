"""Propagate first-frame masks: every sequence of a DAVIS split, or one video of your own.

    python tools/propagate.py davis_root=DIR out=RES features=pixels|random|checkpoint [checkpoint=CKPT] [split=val]
    python tools/propagate.py video=clip.mp4 mask=first.png out=DIR [features=...] [checkpoint=CKPT] [short_side=480]
    python tools/propagate.py benchmark=davis|ytvos|mose|jhmdb|vip root=DIR out=RES [features=...] [checkpoint=CKPT]

Protocol options (defaults = videowalk's DAVIS evaluation): n_context=20 topk=10 radius=12
temperature=0.05 window=circle pad_first=true downsample=bilinear restrict_first=false layer=auto.

DAVIS: writes palette PNGs to ``RES/<sequence>/<frame>.png``; score them with
``python tools/evaluate.py metric=davis davis_root=DIR results=RES``. A video: writes ``DIR/masks/*.png``,
``DIR/overlay.mp4`` and ``DIR/overlay.gif``. Benchmarks (``configs/benchmark/NAME.yaml`` sets each one's layout
and official settings): YouTube-VOS/MOSE write ``RES/Annotations/`` and ``RES/submission.zip``, JHMDB
``RES/keypoints/``, VIP ``RES/<video>/``; score them with ``tools/evaluate.py metric=ytvos|jhmdb|vip root=DIR
results=RES out=DIR``. All logic is in ``vidssl.eval``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidssl.cli import explain_instantiation_errors
from vidssl.eval.features import build_feature_fn
from vidssl.eval.propagate import propagate_dataset
from vidssl.eval.track import track_video

PROTOCOL = ("n_context", "topk", "radius", "temperature", "restrict_first", "window", "pad_first", "downsample", "tile")


def propagate_benchmark(cfg: DictConfig, feature_fn, protocol: dict) -> str:
    """benchmark=ytvos|mose|jhmdb|vip: the layout's propagation; returns what was written."""
    if cfg.root is None:
        raise SystemExit(f"benchmark={cfg.layout} needs root=DIR (the benchmark's folder)")
    if cfg.layout == "vos":
        from vidssl.eval.vos import propagate_vos

        out = propagate_vos(cfg.root, cfg.out, feature_fn, split=cfg.split, meta=cfg.meta, **protocol)
        return f"{out}/Annotations/ and {out}/submission.zip"
    if cfg.layout == "jhmdb":
        from vidssl.eval.jhmdb import propagate_jhmdb

        out = propagate_jhmdb(cfg.out, feature_fn, cfg.root, split=cfg.jhmdb_split, filelist=cfg.filelist,
                              size=cfg.input_size, sigma=cfg.sigma, **protocol)
        return f"{out}/keypoints/"
    if cfg.layout == "vip":
        from vidssl.eval.vip import propagate_vip

        out = propagate_vip(cfg.root, cfg.out, feature_fn, split=cfg.split, size=cfg.input_size,
                            label_resize=cfg.label_resize, **protocol)
        return f"{out}/<video>/"
    raise SystemExit(f"layout={cfg.layout!r}: expected davis, vos, jhmdb or vip (set by benchmark=NAME)")


@hydra.main(config_path="../configs", config_name="propagate", version_base="1.3")
@explain_instantiation_errors
def main(cfg: DictConfig) -> None:
    if cfg.layout not in (None, "davis"):
        feature_fn = build_feature_fn(cfg.features, encoder_cfg=cfg.encoder, checkpoint=cfg.checkpoint,
                                      stride=cfg.stride, clip_len=cfg.clip_len, layer=cfg.layer, device=cfg.device)
        print(f"wrote {propagate_benchmark(cfg, feature_fn, {k: cfg[k] for k in PROTOCOL})}")
        return
    if cfg.layout == "davis" and cfg.root is not None:
        cfg.davis_root = cfg.root
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
