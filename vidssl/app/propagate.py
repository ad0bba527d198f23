"""Propagate first-frame masks: every sequence of a DAVIS split, or one video of your own.

    python tools/propagate.py davis_root=DIR out=RES features=pixels|random|checkpoint [checkpoint=CKPT] [split=val]
    python tools/propagate.py davis_root=DIR out=RES features=timm model=vit_base_patch8_224.dino \
        weights=dino_vitbase8_pretrain.pth protocol=dino
    python tools/propagate.py video=clip.mp4 mask=first.png out=DIR [features=...] [checkpoint=CKPT] [short_side=N] [overwrite=true]
    python tools/propagate.py davis_root=DIR out=RES features=... sweep=true split=train [apply_split=val]
    python tools/propagate.py benchmark=davis|ytvos|mose|jhmdb|vip root=DIR out=RES [features=...] [checkpoint=CKPT]

Protocol options (defaults = videowalk's DAVIS evaluation): n_context=20 topk=10 radius=12
temperature=0.05 window=circle pad_first=true downsample=bilinear restrict_first=false layer=auto;
presets: protocol=videowalk|dino|dinov3|vjepa21|vfs (vidssl/configs/protocol/, each citing its source).

DAVIS: writes palette PNGs to ``RES/<sequence>/<frame>.png`` and (``overlay=true``, the default)
``RES/<sequence>/overlay.mp4`` and ``overlay.gif``; score them with
``python tools/evaluate.py metric=davis davis_root=DIR results=RES``. A video: writes ``DIR/masks/*.png``,
``DIR/overlay.mp4`` and ``DIR/overlay.gif``. Benchmarks (``vidssl/configs/benchmark/NAME.yaml`` sets each one's layout
and official settings): YouTube-VOS/MOSE write ``RES/Annotations/`` and ``RES/submission.zip``, JHMDB
``RES/keypoints/``, VIP ``RES/<video>/``; score them with ``tools/evaluate.py metric=ytvos|jhmdb|vip root=DIR
results=RES out=DIR``. All logic is in ``vidssl.eval``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.app.errors import check_overrides, one_line_errors
from vidssl.app.outputs import prepare_out
from vidssl.app.threads import set_cpu_threads
from vidssl.configs import CONFIG_DIR
from vidssl.eval.features import build_feature_fn
from vidssl.eval.propagate import propagate_dataset
from vidssl.eval.track import track_video

PROTOCOL = ("n_context", "topk", "radius", "temperature", "restrict_first", "window", "pad_first", "downsample", "tile",
            "ties", "upsample")


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


def protocol_stride(feature_fn, cfg: DictConfig) -> str:
    """The feature cell in pixels, as far as the source says."""
    stride = getattr(feature_fn, "patch", None) or getattr(feature_fn, "stride", None)
    return f"{stride} px" if stride else "the encoder's"


@hydra.main(config_path=str(CONFIG_DIR), config_name="propagate", version_base="1.3")
@one_line_errors
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    benchmark = cfg.layout not in (None, "davis")
    if cfg.layout == "davis" and cfg.root is not None:
        cfg.davis_root = cfg.root
    if not benchmark and (cfg.davis_root is None) == (cfg.video is None):
        raise SystemExit("give either davis_root=DIR (a DAVIS layout), benchmark=NAME root=DIR, "
                         "or video=FILE mask=PNG (one video)")
    if cfg.video is not None and cfg.mask is None:
        raise SystemExit("video=FILE needs mask=PNG: the first frame's mask")
    if not benchmark and not cfg.get("sweep"):
        # before any feature is built: earlier masks would mix with this run's
        prepare_out(cfg.out, overwrite=bool(cfg.get("overwrite")))
    if cfg.video is not None:  # the video opens, the mask reads and fits: before any weight is loaded
        from vidssl.eval.track import check_inputs

        resized = cfg.short_side is not None and not (cfg.features in ("timm", "torchvision") and cfg.resize != "none")
        check_inputs(cfg.video, cfg.mask, short_side=cfg.short_side if resized else None,
                     threshold=cfg.get("threshold"))
    threads = set_cpu_threads(requested=cfg.get("threads"), device=cfg.device)
    backbone = {}
    if cfg.features in ("timm", "torchvision"):
        if not cfg.get("model"):
            raise SystemExit(f"features={cfg.features} needs model=NAME (a timm model name, or resnet50…)")
        if cfg.features == "torchvision" and cfg.model_kwargs:
            raise SystemExit("model_kwargs applies to features=timm")
        backbone = dict(model=cfg.model, weights=cfg.weights, checkpoint_key=cfg.checkpoint_key, block=cfg.block,
                        resize=cfg.resize, short_side=cfg.short_side, mean=cfg.mean, std=cfg.std,
                        pos_resample=cfg.pos_resample, model_kwargs=dict(cfg.model_kwargs or {}))
    feature_fn = build_feature_fn(cfg.features, encoder_cfg=cfg.encoder, checkpoint=cfg.checkpoint,
                                  stride=cfg.stride, clip_len=cfg.clip_len, layer=cfg.layer, device=cfg.device,
                                  **backbone)
    from vidssl.app.used import describe, encoder_facts

    source = cfg.features if cfg.features != "checkpoint" else f"checkpoint {cfg.checkpoint}"
    facts = encoder_facts(getattr(feature_fn, "encoder", None), source=source,
                          layer=getattr(feature_fn, "layer", None),
                          input_size=f"short side {cfg.short_side}" if cfg.short_side else "as stored")
    print(f"propagate: {describe(facts)}, stride {protocol_stride(feature_fn, cfg)}, {threads.describe()}", flush=True)
    protocol = {k: cfg[k] for k in PROTOCOL}
    # upsample=patch: the feature stride (a backbone's patch size, the pixel cell size)
    protocol["patch"] = getattr(feature_fn, "patch", None) or getattr(feature_fn, "stride", None)
    if benchmark:
        print(f"wrote {propagate_benchmark(cfg, feature_fn, protocol)}")
        return
    if cfg.get("sweep"):
        from omegaconf import OmegaConf

        from vidssl.eval.sweep import apply_best, sweep_protocol

        if cfg.davis_root is None:
            raise SystemExit("sweep=true needs davis_root=DIR (a DAVIS layout with the split to sweep)")
        grid = OmegaConf.to_container(cfg.sweep_grid)
        base = {k: v for k, v in protocol.items() if k not in grid}
        table, best = sweep_protocol(cfg.davis_root, cfg.out, feature_fn, grid=grid, split=cfg.split, base=base,
                                     resolution=cfg.resolution)
        print(f"{len(table)} settings on {cfg.split}: best {best} J&F {table[0]['J&F-Mean']:.4f} "
              f"(table: {cfg.out}/sweep-{cfg.split}.csv)")
        metrics = apply_best(cfg.davis_root, cfg.out, feature_fn, best, split=cfg.apply_split, base=base,
                             resolution=cfg.resolution)
        print(f"{cfg.apply_split} with the best setting: J&F {metrics['J&F-Mean']:.4f} "
              f"({cfg.out}/best-{cfg.apply_split}.json)")
        return
    if cfg.video is not None:
        # a backbone that prepares its own frames (resize=dino|multiple|short) sees the video at its size
        short_side = None if backbone and cfg.resize != "none" else cfg.short_side
        result = track_video(cfg.video, cfg.mask, cfg.out, feature_fn, short_side=short_side,
                             max_frames=cfg.max_frames, fps=cfg.fps, start_frame=cfg.get("start_frame", 0),
                             threshold=cfg.get("threshold"), overlay=cfg.get("overlay", True), **protocol)
        overlays = f", {result['mp4']}, {result['gif']}" if result["mp4"] else ""
        print(f"tracked {result['objects']} object(s) through {result['frames']} frames: {result['masks']}/{overlays}")
        if result["truncated"]:
            print(f"warning: {result['truncated']}")
        return
    folders = propagate_dataset(cfg.davis_root, cfg.out, feature_fn, split=cfg.split, resolution=cfg.resolution,
                                overlay=cfg.get("overlay", True), fps=cfg.fps, **protocol)
    overlays = " (masks, overlay.mp4 and overlay.gif per sequence)" if cfg.get("overlay", True) else ""
    print(f"wrote {len(folders)} sequences to {cfg.out}{overlays}")


def main() -> None:
    """The command line (``sys.argv``)."""
    check_overrides("propagate", doc=__doc__)  # a wrong key: one line, before Hydra starts
    run()


if __name__ == "__main__":
    main()
