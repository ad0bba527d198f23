"""VIP human-part propagation and mIoU, as videowalk computes them.

The protocol of ajabri/videowalk (commit 047f3f40135a4b1be2f837793b89c3dbfe7a6683: ``code/test.py``
with ``code/data/vos.py`` on VIP, scored by ``code/eval/eval_vip.py``; command of videowalk issue #10:
``--topk 10 --videoLen 4 --radius 12 --temperature 0.05 --cropSize 560``):

1. frames are resized to ``size``×``size`` (560: a square), bilinearly;
2. the first annotation (part ids 0..19) is resized to the same square. ``vos.py`` calls
   ``cv2.resize(label, (h, w), cv2.INTER_NEAREST)``, whose third positional argument is the output
   buffer, not the interpolation: the ids are interpolated bilinearly and rounded, which puts
   in-between ids on part borders. ``label_resize="bilinear"`` (default) does the same;
   ``"nearest"`` keeps only the ids present;
3. labels are propagated with `propagate_labels` (the DAVIS protocol, ``n_context`` 4);
4. every frame's label map (frame 0 too, through its down- and upsampling, as ``test.py`` writes
   it) is resized back to the annotation's size by nearest neighbour (``eval_vip.py`` does it with
   PIL) and written as a grey PNG of part ids: ``out/<video>/<frame>.png``;
5. mIoU (`evaluate_vip`): one 20×20 confusion matrix over every annotated frame of every video
   (ground-truth pixels outside 0..19, e.g. 255, are ignored), IoU per class = diagonal / (row sum
   + column sum − diagonal), mIoU the mean over classes that occur (``np.nanmean``).

Layout: ``Images/<video>/<frame>.jpg`` (or ``Images/videos/<video>/``), ``Annotations/Category_ids/
<video>/<frame>.png``, ``lists/<split>_videos.txt``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from vidssl.eval.davis import _plain_table
from vidssl.eval.propagate import FeatureFn, first_frame_labels, propagate_labels, read_frame

NUM_CLASSES = 20
CLASSES = ("background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks", "pants",
           "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm", "right-leg", "left-leg",
           "right-shoe", "left-shoe")
LABEL_RESIZE = ("bilinear", "nearest")


def vip_videos(root: str | Path, split: str = "val") -> list[tuple[str, list[Path], Path]]:
    """(video, sorted frames, annotation folder) of every video in ``lists/<split>_videos.txt``."""
    root = Path(root)
    listing = root / "lists" / f"{split}_videos.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"vip: no video list {listing}")
    images = root / "Images" / "videos" if (root / "Images" / "videos").is_dir() else root / "Images"
    videos = []
    for name in [line.strip() for line in listing.read_text().splitlines() if line.strip()]:
        frames = sorted((images / name).glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"vip: video {name!r} has no frames (*.jpg) in {images / name}")
        annotations = root / "Annotations" / "Category_ids" / name
        if not (annotations / f"{frames[0].stem}.png").is_file():
            raise FileNotFoundError(f"vip: video {name!r} has no annotation of its first frame "
                                    f"{annotations / (frames[0].stem + '.png')}")
        videos.append((name, frames, annotations))
    return videos


def read_parts(path: str | Path) -> np.ndarray:
    """A part-id PNG as H×W int64 (a colour PNG's last channel, as ``eval_vip.py`` reads predictions)."""
    with Image.open(path) as image:
        array = np.array(image, dtype=np.int64)
    return array[..., 0] if array.ndim == 3 else array


def resize_labels(labels: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """H×W ids → size (h, w): bilinear on the ids, rounded (what ``vos.py`` does) or nearest."""
    if mode not in LABEL_RESIZE:
        raise ValueError(f"label_resize={mode!r}: expected one of {', '.join(LABEL_RESIZE)}")
    if tuple(labels.shape) == tuple(size):
        return labels.astype(np.uint8)
    x = torch.from_numpy(labels.astype(np.float32))[None, None]
    if mode == "nearest":
        return np.array(Image.fromarray(labels.astype(np.uint8)).resize(size[::-1], Image.NEAREST))
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0]
    return (y + 0.5).floor().clamp(0, 255).to(torch.uint8).numpy()


def _resize_frame(frame: Tensor, size: int | None) -> Tensor:
    if size is None or tuple(frame.shape[:2]) == (size, size):
        return frame
    x = F.interpolate(frame.permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def propagate_video(frames: Sequence[Path], first: np.ndarray, feature_fn: FeatureFn, *, size: int | None = 560,
                    label_resize: str = "bilinear", name: str = "", **protocol):
    """Propagate a first part annotation; yields each frame's part ids at the annotation's size."""
    height, width = first.shape
    frame0 = read_frame(frames[0])
    work = (height, width) if size is None else (size, size)
    mask = resize_labels(first, work, label_resize)
    f0 = feature_fn(_resize_frame(frame0, size))

    def feats(t: int) -> Tensor:
        return f0 if t == 0 else feature_fn(_resize_frame(read_frame(frames[t]), size))

    def back(label_map: np.ndarray) -> np.ndarray:
        if label_map.shape == (height, width):
            return label_map
        return np.array(Image.fromarray(label_map.astype(np.uint8)).resize((width, height), Image.NEAREST))

    maps = propagate_labels(feats, mask, len(frames), name=name, **protocol)
    next(maps)  # frame 0 is written as test.py writes it: through its down- and upsampling
    soft = first_frame_labels(mask, tuple(f0.shape[-2:]), downsample=protocol.get("downsample", "bilinear"))
    full = F.interpolate(soft.permute(2, 0, 1)[None], size=work, mode="bilinear", align_corners=False)[0]
    yield back(full.argmax(0).to(torch.uint8).numpy())
    for label_map in maps:
        yield back(label_map.numpy())


def propagate_vip(root: str | Path, out: str | Path, feature_fn: FeatureFn, split: str = "val", *,
                  size: int | None = 560, label_resize: str = "bilinear", progress: bool = True, **protocol) -> Path:
    """Propagate every video of a VIP split; writes ``out/<video>/<frame>.png`` (part ids, annotation size)."""
    out = Path(out)
    for name, frames, annotations in tqdm(vip_videos(root, split), desc=f"propagate vip {split}", unit="video",
                                          disable=not progress):
        first = read_parts(annotations / f"{frames[0].stem}.png")
        if first.max() >= NUM_CLASSES:
            raise ValueError(f"vip: {annotations / (frames[0].stem + '.png')} has part id {first.max()} "
                             f"(expected 0..{NUM_CLASSES - 1})")
        (out / name).mkdir(parents=True, exist_ok=True)
        with torch.inference_mode():
            for frame, parts in zip(frames, propagate_video(frames, first, feature_fn, size=size,
                                                            label_resize=label_resize, name=name, **protocol)):
                Image.fromarray(parts.astype(np.uint8)).save(out / name / f"{frame.stem}.png")
    return out


# --------------------------------------------------------------------------------------------------
# mIoU


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """num_classes² counts: rows ground truth, columns prediction; gt outside 0..n−1 is ignored."""
    keep = (gt >= 0) & (gt < num_classes)
    return np.bincount(num_classes * gt[keep].astype(int) + pred[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes)


def scores(hist: np.ndarray) -> dict:
    """Overall pixel accuracy, mean class accuracy, per-class IoU, mIoU (nan-mean) and fwIoU of a confusion matrix."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        correct, gt_pixels = np.diag(hist), hist.sum(1)
        iou = correct / (gt_pixels + hist.sum(0) - correct)
        freq = gt_pixels / hist.sum()
        return {"mIoU": float(np.nanmean(iou)), "pixel_accuracy": float(correct.sum() / hist.sum()),
                "mean_accuracy": float(np.nanmean(correct / gt_pixels)),
                "fwIoU": float((freq[freq > 0] * iou[freq > 0]).sum()), "IoU": iou.tolist()}


def evaluate_vip(root: str | Path, results: str | Path, split: str = "val") -> tuple[dict, str]:
    """mIoU of ``results/<video>/<frame>.png`` over every annotated frame of the split's videos.

    A prediction of another size is resized to the annotation's by nearest neighbour (as
    ``eval_vip.py``); a missing prediction or an id ≥ 20 is an error naming the file.
    """
    results = Path(results)
    hist = np.zeros((NUM_CLASSES, NUM_CLASSES))
    frames = 0
    for name, _, annotations in vip_videos(root, split):
        for gt_path in sorted(annotations.glob("*.png")):
            pred_path = results / name / gt_path.name
            if not pred_path.is_file():
                raise FileNotFoundError(f"vip: no prediction {pred_path} for {gt_path}")
            gt, pred = read_parts(gt_path), read_parts(pred_path)
            if pred.max() >= NUM_CLASSES:
                raise ValueError(f"vip: {pred_path} has part id {pred.max()} (expected 0..{NUM_CLASSES - 1})")
            if pred.shape != gt.shape:
                pred = np.array(Image.fromarray(pred.astype(np.uint8)).resize(gt.shape[::-1], Image.NEAREST),
                                dtype=np.int64)
            hist += confusion(gt, pred)
            frames += 1
    metrics = {**scores(hist), "frames": frames}
    per_class = [{"class": c, "IoU": float(v)} for c, v in zip(CLASSES, metrics["IoU"])]
    table = _plain_table([{k: metrics[k] for k in ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "frames")}],
                         ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "frames"))
    return metrics, table + "\n\n" + _plain_table(per_class, ("class", "IoU"))
