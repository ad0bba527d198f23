"""protocol=dino against facebookresearch/dino's label_propagation loop, and ViT feature extraction cost.

    python tools/benchmark.py suite=propagate_dino out=DIR official=PATH/TO/dino [frames=10] [channels=384]
        [extraction=true] [short_sides=[480,960,1440]] [models=[vit_small_patch16_224,vit_base_patch16_224]]

Propagation (needs ``official``, a checkout of facebookresearch/dino, imported at run time): one
video of ``frames`` frames of smooth drifting unit features (``channels`` wide) on the token grid of
a DAVIS 480p frame at each (short side, patch) of ``sizes`` — 480 px with patch 8 and 960 px with
patch 16 both give read_frame's 480×832 / 960×1664 → a 60×104 grid — is labelled by

- DINO: ``eval_video_tracking_davis``'s loop without its file I/O: ``label_propagation`` (its
  ``extract_feature`` reading the precomputed tokens through a stand-in model), the queue of 7,
  bilinear upsampling by the patch size, ``norm_mask``, argmax; its neighbourhood mask is built once
  by ``restrict_neighborhood`` (timed apart: a one-off per video, as the script passes it on);
- vidssl: `propagate_labels` with the dino preset's settings (the windowed implementation).

Every frame's label map is compared. Memory rows: the peak beyond the inputs of one DINO step at full
context (its dense 8×hw×hw affinity and mask), and of vidssl's whole video at 1× and 2× the length.

Extraction (``extraction=true``): seconds per frame and peak extra memory of `BackboneFeatures` with
each timm ViT of ``models`` at random initialisation on a 480×854 frame prepared by the DINOv3 rule
(``resize=multiple``) at each of ``short_sides``; attention is timm's fused
``scaled_dot_product_attention``.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections import deque
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vidssl.benchmarks.memory import peak_extra_mib
from vidssl.benchmarks.propagate import _return_freed_memory_to_os
from vidssl.eval.propagate import propagate_labels

DINO_PROTOCOL = dict(n_context=7, topk=5, radius=12, temperature=0.1, window="square", restrict_first=True,
                     pad_first=False, downsample="pil_nearest", ties=True, upsample="patch")


def smooth_features(frames: int, dim: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """T×D×h×w unit features: a smooth random field drifting one cell every two frames, plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, dim, h + 2 * frames + 8, w + frames + 8, generator=g), 9, 1)[0]
    out = []
    for t in range(frames):
        s = t // 2
        out.append(base[:, s: s + h, s // 2: s // 2 + w] + 0.3 * torch.randn(dim, h, w, generator=g))
    return F.normalize(torch.stack(out), dim=1)


def first_mask(h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[h // 6: h // 2, w // 6: w // 2] = 1
    mask[h // 2: 5 * h // 6, w // 2: 5 * w // 6] = 2
    mask[h // 8: h // 3, 2 * w // 3: 7 * w // 8] = 3
    return mask


def _import_dino(path: str):
    sys.path.insert(0, path)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the script moves everything to the GPU
    import eval_video_segmentation as official

    return official


def dino_loop(official, feats: torch.Tensor, mask: torch.Tensor, patch: int, neighborhood: torch.Tensor,
              *, on_step=None) -> list[torch.Tensor]:
    """eval_video_tracking_davis's loop on precomputed tokens (no file I/O); returns label maps (h·p×w·p)."""
    import copy
    import queue

    args = official.args
    T, D, h, w = feats.shape
    model = types.SimpleNamespace(patch_embed=types.SimpleNamespace(patch_size=patch))
    tokens = {}

    def get_intermediate_layers(x, n=1):
        return [tokens["current"]]

    model.get_intermediate_layers = get_intermediate_layers

    def as_tokens(t):  # (1, 1 + h·w, D): a class token, then the patch tokens row by row
        return torch.cat([torch.zeros(1, 1, D), feats[t].flatten(1).T[None]], dim=1)

    frame = torch.empty(3, h * patch, w * patch)
    tokens["current"] = as_tokens(0)
    first_feat = official.extract_feature(model, frame).T
    first_seg = official.to_one_hot(mask[None].float())
    que = queue.Queue(args.n_last_frames)
    maps = [mask]
    for t in range(1, T):
        tokens["current"] = as_tokens(t)
        used_feats = [first_feat] + [pair[0] for pair in list(que.queue)]
        used_segs = [first_seg] + [pair[1] for pair in list(que.queue)]
        avg, feat_tar, _ = official.label_propagation(args, model, frame, used_feats, used_segs, neighborhood)
        if on_step is not None:
            on_step(t)
        if que.qsize() == args.n_last_frames:
            que.get()
        que.put([feat_tar, copy.deepcopy(avg)])
        avg = F.interpolate(avg, scale_factor=patch, mode="bilinear", align_corners=False,
                            recompute_scale_factor=False)[0]
        maps.append(torch.max(official.norm_mask(avg), dim=0)[1])
    return maps


def compare_dino(official_path: str, *, frames: int, dim: int, sizes: Sequence[Sequence[int]],
                 seed: int = 0) -> list[dict]:
    official = _import_dino(official_path)
    rows = []
    memory_ok = _return_freed_memory_to_os()
    done_grids: dict[tuple[int, int], dict] = {}
    for short_side, patch in sizes:
        frame_h, frame_w = short_side, int((short_side * 854 / 480) // 64 * 64)  # read_frame of a 480p frame
        h, w = frame_h // patch, frame_w // patch
        if (h, w) in done_grids:  # the same token grid (480/8 and 960/16): the same computation
            rows.append({**done_grids[(h, w)], "short_side": short_side, "patch": patch})
            continue
        official.args = types.SimpleNamespace(n_last_frames=7, size_mask_neighborhood=12, topk=5)
        feats = smooth_features(frames, dim, h, w, seed)
        mask = first_mask(h, w)  # read_seg's grid-sized mask; vidssl gets it at frame size, as DAVIS stores it
        full_mask = mask.repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        start = time.perf_counter()
        neighborhood = official.restrict_neighborhood(h, w)
        mask_seconds = time.perf_counter() - start
        # label_propagation builds it at frame 1 (one context frame: 1×hw×hw) and passes it on; it broadcasts
        neighborhood = neighborhood.unsqueeze(0)
        with torch.inference_mode():
            start = time.perf_counter()
            reference = dino_loop(official, feats, mask, patch, neighborhood)
            dino_seconds = (time.perf_counter() - start) / (frames - 1)
            start = time.perf_counter()
            ours = list(propagate_labels(feats, full_mask, patch=patch, **DINO_PROTOCOL))
            ours_seconds = (time.perf_counter() - start) / (frames - 1)
        mismatched = sum(int((a.long() != b.long()).sum()) for a, b in zip(ours[1:], reference[1:]))
        # memory: DINO at full context (8 frames) for one step; vidssl over the whole video, 1× and 2× long
        dino_peak = ours_peak = ours_peak_2x = None
        if memory_ok:
            with torch.inference_mode():
                ctx_feats = [feats[0].flatten(1)] * 8
                ctx_segs = [official.to_one_hot(mask[None].float())] * 8
                tokens = torch.cat([torch.zeros(1, 1, dim), feats[1].flatten(1).T[None]], dim=1)
                model = types.SimpleNamespace(patch_embed=types.SimpleNamespace(patch_size=patch),
                                              get_intermediate_layers=lambda x, n=1: [tokens])
                frame = torch.empty(3, h * patch, w * patch)
                dino_peak = peak_extra_mib(lambda: official.label_propagation(
                    official.args, model, frame, ctx_feats, ctx_segs, neighborhood)[0], torch.device("cpu"))
                long = torch.cat([feats, feats.flip(0)])

                def whole(video):
                    def run():  # every frame propagated; the last one's labels kept
                        return deque(propagate_labels(lambda t: video[t], full_mask, len(video), patch=patch,
                                                      **DINO_PROTOCOL), maxlen=1)[0]
                    return run

                ours_peak = peak_extra_mib(whole(feats), torch.device("cpu"))
                ours_peak_2x = peak_extra_mib(whole(long), torch.device("cpu"))
        grid = f"{h}x{w}"
        rows.append({"short_side": short_side, "patch": patch, "grid": grid, "channels": dim, "frames": frames,
                     "dino_s_per_frame": round(dino_seconds, 3), "vidssl_s_per_frame": round(ours_seconds, 3),
                     "speedup": round(dino_seconds / ours_seconds, 1),
                     "dino_mask_build_s": round(mask_seconds, 1),
                     "identical": mismatched == 0, "mismatched_pixels": mismatched,
                     "dino_step_peak_mib": None if dino_peak is None else round(dino_peak),
                     "vidssl_video_peak_mib": None if ours_peak is None else round(ours_peak),
                     "vidssl_2x_video_peak_mib": None if ours_peak_2x is None else round(ours_peak_2x)})
        done_grids[(h, w)] = rows[-1]
        del neighborhood
    return rows


def extraction(models: Sequence[str], short_sides: Sequence[int], *, height: int = 480, width: int = 854,
               repeats: int = 1) -> list[dict]:
    from vidssl.encoders.backbones import TimmBackbone
    from vidssl.eval.backbone_features import BackboneFeatures

    memory_ok = _return_freed_memory_to_os()
    frame = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = []
    for name in models:
        fn = BackboneFeatures(TimmBackbone(model=name), resize="multiple", short_side=short_sides[0])
        for side in short_sides:
            fn.short_side = side
            x = fn.prepare(frame)
            start = time.perf_counter()
            for _ in range(repeats):
                out = fn(frame)
            seconds = (time.perf_counter() - start) / repeats
            peak = peak_extra_mib(lambda: fn(frame), torch.device("cpu")) if memory_ok else None
            rows.append({"model": name, "short_side": side, "input": f"{x.shape[1]}x{x.shape[2]}",
                         "tokens": out.shape[1] * out.shape[2], "s_per_frame": round(seconds, 2),
                         "peak_extra_mib": None if peak is None else round(peak)})
    return rows


def run(*, official: str | None = None, frames: int = 10, channels: int = 384,
        sizes: Sequence[Sequence[int]] = ((480, 8), (960, 16)), extraction: bool = True, models: Sequence[str] = ("vit_small_patch16_224", "vit_base_patch16_224"),
        short_sides: Sequence[int] = (480, 960, 1440), seed: int = 0) -> dict:
    """Rows for the propagation comparison (with ``official``) and the extraction costs (see the module doc)."""
    rows = []
    if official is not None:
        rows += compare_dino(official, frames=frames, dim=channels, sizes=sizes, seed=seed)
    if extraction:
        rows += extraction_rows(models, short_sides)
    return {"rows": rows, "config": dict(official=official, frames=frames, channels=channels, sizes=list(sizes),
                                         models=list(models), short_sides=list(short_sides),
                                         threads=torch.get_num_threads(), protocol=DINO_PROTOCOL,
                                         omp_threads=os.environ.get("OMP_NUM_THREADS"))}


extraction_rows = extraction
