"""YouTube-VOS (2018/2019) and MOSE: semi-supervised propagation with late-appearing objects, the
evaluation servers' submission layout, and local J&F.

Layout (both datasets; ``root/<split>/``)::

    JPEGImages/<video>/<frame>.jpg
    Annotations/<video>/<frame>.png     palette PNGs; on the validation split only the frames where an
                                        object's first mask is given, on train every listed frame
    meta.json                           {"videos": {<video>: {"objects": {<id>: {"category": ...,
                                                                                "frames": [<frame>, ...]}}}}}

The protocol: an object's first mask is the annotation of the first frame that ``meta.json`` lists
for it, restricted to its id. Objects whose first masks are given on the same frame form a group;
each group is propagated with `propagate_labels` from that frame on (the frames before it hold none
of it), with the DAVIS protocol's options. The groups' label maps are merged into one map per frame
in the order of their first frames: a later group's objects are painted over the earlier ones, so
on its first frame a new object's given mask is kept as given. All groups advance frame by frame
together and share each frame's features (computed once); memory is that of one DAVIS propagation
per group, flat in the video's length.

Results are written in the servers' layout: ``out/Annotations/<video>/<frame>.png`` for every
frame that ``meta.json`` lists for the video, 8-bit palette PNGs (the VOC palette, object ids as
indices) at the annotation's size, and ``out/submission.zip`` holding ``Annotations/``.

Local J&F (`evaluate_vos`): on a split whose every listed frame is annotated (e.g. a held-out part of
train), J and F of each object on each of its listed frames after its first (the given one); an
object's J and F are their means over those frames. With seen categories (the training split's
``meta.json``), the YouTube-VOS table: J/F seen and unseen (means over the objects of seen and
unseen categories) and Overall, the mean of the four; otherwise J&F = (J + F) / 2 over all objects.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from vidssl.datasets.formats import read_mask, write_mask
from vidssl.eval.davis import _plain_table, contour_accuracy, region_similarity
from vidssl.eval.propagate import FeatureFn, propagate_labels, read_frame


@dataclass(frozen=True)
class VosObject:
    """One object of a video: its id (palette index), category (may be empty) and listed frames (stems)."""

    id: int
    category: str
    frames: tuple[str, ...]


@dataclass(frozen=True)
class VosVideo:
    """One video: its frames (every JPEG, sorted), annotation folder and objects (by first frame)."""

    name: str
    frames: tuple[Path, ...]
    annotations: Path
    objects: tuple[VosObject, ...]

    @property
    def listed_frames(self) -> list[str]:
        """Every frame ``meta.json`` lists for the video (the union over its objects), sorted."""
        return sorted({f for obj in self.objects for f in obj.frames})


def read_meta(path: str | Path) -> dict:
    """A YouTube-VOS/MOSE ``meta.json``: ``{"videos": {video: {"objects": {id: {"frames": [...]}}}}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"meta.json not found: {path}")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'videos' mapping")
    return meta


def vos_videos(root: str | Path, split: str = "valid", *, meta: str = "meta.json") -> list[VosVideo]:
    """The videos of ``root/<split>`` (see the module doc), in ``meta.json`` order.

    Without ``root/<split>/<meta>``, the objects and their frames come from the annotations
    (`meta_from_annotations`).

    Raises an error naming the video when its frames are missing, an object lists no frames, or a
    listed frame has no JPEG.
    """
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"vos: split folder not found: {base}")
    meta_data = read_meta(base / meta) if (base / meta).is_file() else meta_from_annotations(base)
    videos = []
    for name, entry in meta_data["videos"].items():
        objects_meta = (entry or {}).get("objects")
        if not isinstance(objects_meta, dict) or not objects_meta:
            raise ValueError(f"{base / meta}: video {name!r} lists no objects")
        frame_dir = base / "JPEGImages" / name
        frames = tuple(sorted(frame_dir.glob("*.jpg"))) if frame_dir.is_dir() else ()
        if not frames:
            raise FileNotFoundError(f"vos: video {name!r} has no frames (*.jpg) in {frame_dir}")
        stems = {f.stem for f in frames}
        objects = []
        for key, obj in objects_meta.items():
            listed = tuple(sorted(obj.get("frames") or ()))
            if not listed:
                raise ValueError(f"{base / meta}: object {key} of video {name!r} lists no frames")
            missing = [f for f in listed if f not in stems]
            if missing:
                raise FileNotFoundError(f"vos: video {name!r} object {key}: listed frames without a JPEG in "
                                        f"{frame_dir}: {missing[:5]}")
            objects.append(VosObject(int(key), str(obj.get("category", "")), listed))
        objects.sort(key=lambda o: (o.frames[0], o.id))
        videos.append(VosVideo(name, frames, base / "Annotations" / name, tuple(objects)))
    return videos


def meta_from_annotations(base: Path) -> dict:
    """``meta.json``'s content for a split without one: each id's first frame is the first annotation
    showing it, and it is listed on every frame from there (categories unknown)."""
    if not (base / "Annotations").is_dir():
        raise FileNotFoundError(f"vos: {base} has neither meta.json nor Annotations/")
    videos = {}
    for folder in sorted(p for p in (base / "Annotations").iterdir() if p.is_dir()):
        stems = sorted(f.stem for f in (base / "JPEGImages" / folder.name).glob("*.jpg"))
        first: dict[int, str] = {}
        for png in sorted(folder.glob("*.png")):
            for obj in np.unique(read_mask(png)).tolist():
                if obj not in (0, 255):
                    first.setdefault(int(obj), png.stem)
        videos[folder.name] = {"objects": {str(k): {"category": "", "frames": [s for s in stems if s >= f]}
                                           for k, f in sorted(first.items())}}
    return {"videos": videos}


def seen_categories(meta_path: str | Path) -> set[str]:
    """The categories of a training split's ``meta.json``: an object of one of them is "seen"."""
    return {str(obj.get("category", "")) for video in read_meta(meta_path)["videos"].values()
            for obj in (video.get("objects") or {}).values()}


# --------------------------------------------------------------------------------------------------
# Propagation


def start_groups(video: VosVideo) -> list[tuple[str, list[VosObject]]]:
    """The objects grouped by the frame where their first mask is given, in frame order."""
    groups: dict[str, list[VosObject]] = {}
    for obj in video.objects:
        groups.setdefault(obj.frames[0], []).append(obj)
    return sorted(groups.items())


def first_masks(video: VosVideo, frame: str, objects: Sequence[VosObject]) -> np.ndarray:
    """The given mask of ``objects`` on ``frame``: H×W uint8, 1..n for the objects in order, 0 elsewhere."""
    path = video.annotations / f"{frame}.png"
    if not path.is_file():
        raise FileNotFoundError(f"vos: video {video.name!r}: no annotation {path} for the first frame of "
                                f"object(s) {[o.id for o in objects]}")
    annotation = read_mask(path)
    out = np.zeros(annotation.shape, dtype=np.uint8)
    for k, obj in enumerate(objects, start=1):
        if not (annotation == obj.id).any():
            raise ValueError(f"vos: video {video.name!r}: object {obj.id} is empty in {path}, its first frame")
        out[annotation == obj.id] = k
    return out


def merge_groups(maps: Sequence[np.ndarray | None], ids: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """One label map from the groups' maps (earliest group first; None: not started yet).

    Inputs: maps[g] H×W with 0 background and 1..n_g for group g's objects, ids[g] their object ids.
    Output: H×W uint8 object ids; a later group's objects are painted over earlier ones.
    """
    out = np.zeros(shape, dtype=np.uint8)
    for group_map, group_ids in zip(maps, ids):
        if group_map is None:
            continue
        lookup = np.array([0, *group_ids], dtype=np.uint8)
        out = np.where(group_map > 0, lookup[group_map], out)
    return out


class _SharedFeatures:
    """Frame index → features, computed once per frame for every group (the last frame is kept)."""

    def __init__(self, frame: Callable[[int], Tensor], feature_fn: FeatureFn) -> None:
        self.frame, self.feature_fn = frame, feature_fn
        self.index, self.value = -1, None

    def __call__(self, t: int) -> Tensor:
        if t != self.index:
            self.index, self.value = t, self.feature_fn(self.frame(t))
        return self.value


def propagate_video(video: VosVideo, feature_fn: FeatureFn, **protocol) -> Iterator[tuple[str, np.ndarray]]:
    """Propagate every object of a video from its first given frame; yields (frame stem, label map).

    The frames run from the earliest first frame of any object to the last JPEG; each label map
    holds the object ids (see the module doc). ``protocol``: `propagate_labels`'s keyword arguments.
    """
    stems = [f.stem for f in video.frames]
    groups = start_groups(video)
    start = stems.index(groups[0][0])
    first_frame = read_frame(video.frames[start])

    def frame(t: int) -> Tensor:
        image = first_frame if t == start else read_frame(video.frames[t])
        if image.shape != first_frame.shape:
            raise ValueError(f"vos: video {video.name!r}: frame {video.frames[t].name} is {tuple(image.shape)}, "
                             f"frame {video.frames[start].name} is {tuple(first_frame.shape)}")
        return image

    shared = _SharedFeatures(frame, feature_fn)
    shape = tuple(first_frame.shape[:2])
    starts, runs, ids = [], [], []
    for stem, objects in groups:
        mask = first_masks(video, stem, objects)
        if mask.shape != shape:
            raise ValueError(f"vos: video {video.name!r}: annotation {stem}.png is {mask.shape[0]}×{mask.shape[1]}, "
                             f"the frames are {shape[0]}×{shape[1]}")
        k = stems.index(stem)
        starts.append(k)
        runs.append(propagate_labels(lambda i, k=k: shared(k + i), mask, len(stems) - k,
                                     name=f"{video.name}@{stem}", **protocol))
        ids.append([o.id for o in objects])
    for t in range(start, len(stems)):
        maps = [next(run).numpy() if t >= k else None for k, run in zip(starts, runs)]
        yield stems[t], merge_groups(maps, ids, shape)


def propagate_vos(root: str | Path, out: str | Path, feature_fn: FeatureFn, split: str = "valid", *,
                  meta: str = "meta.json", progress: bool = True, zip_results: bool = True,
                  **protocol) -> Path:
    """Propagate every video of a YouTube-VOS/MOSE split and write the submission layout.

    Writes ``out/Annotations/<video>/<frame>.png`` for every frame ``meta.json`` lists (palette PNGs
    at the annotation size) and, with ``zip_results``, ``out/submission.zip``. Returns ``out``.
    """
    out = Path(out)
    videos = vos_videos(root, split, meta=meta)
    for video in tqdm(videos, desc=f"propagate {split}", unit="video", disable=not progress):
        listed = set(video.listed_frames)
        with torch.inference_mode():
            for stem, label_map in propagate_video(video, feature_fn, **protocol):
                if stem in listed:
                    write_mask(out / "Annotations" / video.name / f"{stem}.png", label_map)
    if zip_results:
        write_zip(out)
    return out


def write_zip(out: str | Path) -> Path:
    """``out/submission.zip`` holding ``Annotations/<video>/<frame>.png`` (what the servers accept)."""
    out = Path(out)
    annotations = out / "Annotations"
    path = out / "submission.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for png in sorted(annotations.rglob("*.png")):
            archive.write(png, png.relative_to(out).as_posix())
    return path


def check_submission(root: str | Path, results: str | Path, split: str = "valid", *,
                     meta: str = "meta.json") -> list[str]:
    """Problems that would make a server reject ``results`` (a folder holding ``Annotations/``, or a zip).

    Every frame ``meta.json`` lists must have a PNG, 8-bit palette ("P"), of the size of the video's
    annotations. Returns one line per problem (empty: the layout is right).
    """
    results = Path(results)
    problems = []
    archive = zipfile.ZipFile(results) if results.suffix == ".zip" else None
    try:
        for video in vos_videos(root, split, meta=meta):
            given = sorted(video.annotations.glob("*.png"))
            if not given:
                problems.append(f"{video.name}: no annotation to take the size from in {video.annotations}")
                continue
            with Image.open(given[0]) as image:
                size = image.size
            for stem in video.listed_frames:
                name = f"Annotations/{video.name}/{stem}.png"
                try:
                    handle = archive.open(name) if archive else open(results / name, "rb")
                except (KeyError, FileNotFoundError):
                    problems.append(f"{name}: missing")
                    continue
                with handle, Image.open(handle) as image:
                    if image.mode != "P":
                        problems.append(f"{name}: mode {image.mode!r}, not an 8-bit palette PNG")
                    if image.size != size:
                        problems.append(f"{name}: {image.size[0]}×{image.size[1]}, annotations are {size[0]}×{size[1]}")
    finally:
        if archive:
            archive.close()
    return problems


# --------------------------------------------------------------------------------------------------
# Local evaluation


def object_scores(gt: Sequence[np.ndarray], result: Sequence[np.ndarray], object_id: int,
                  bound_th: float = 0.008) -> tuple[float, float]:
    """Mean J and F of one object over paired frames (each H×W object-id maps)."""
    if not gt:
        raise ValueError(f"object {object_id}: no frames to evaluate")
    j = [region_similarity(g == object_id, r == object_id) for g, r in zip(gt, result)]
    f = [contour_accuracy(g == object_id, r == object_id, bound_th) for g, r in zip(gt, result)]
    return float(np.mean(j)), float(np.mean(f))


def evaluate_vos(root: str | Path, results: str | Path, split: str = "valid", *, meta: str = "meta.json",
                 seen: set[str] | None = None, bound_th: float = 0.008,
                 progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Local J&F of a result folder (``results/Annotations/<video>/<frame>.png``) on a fully annotated split.

    Returns (metrics, per_object rows). Metrics: ``J&F``, ``J``, ``F`` over all objects, and with
    ``seen`` (categories of the training split) ``J_seen``, ``F_seen``, ``J_unseen``, ``F_unseen`` and
    ``Overall`` (the mean of those four present). Ground truth 255 counts as background.
    """
    results = Path(results)
    rows = []
    for video in tqdm(vos_videos(root, split, meta=meta), desc=f"evaluate {split}", unit="video",
                      disable=not progress):
        for obj in video.objects:
            gts, preds = [], []
            for stem in obj.frames[1:]:
                gt_path = video.annotations / f"{stem}.png"
                res_path = results / "Annotations" / video.name / f"{stem}.png"
                if not gt_path.is_file():
                    raise FileNotFoundError(f"vos: video {video.name!r}: no ground truth {gt_path}; local "
                                            f"evaluation needs every listed frame annotated")
                if not res_path.is_file():
                    raise FileNotFoundError(f"vos: video {video.name!r}: no result {res_path}")
                gt, pred = read_mask(gt_path), read_mask(res_path)
                if gt.shape != pred.shape:
                    raise ValueError(f"vos: {res_path} is {pred.shape}, the ground truth {gt.shape}")
                gts.append(np.where(gt == 255, 0, gt))
                preds.append(pred)
            if not gts:
                continue  # listed on one frame only: it is given, nothing to score
            j, f = object_scores(gts, preds, obj.id, bound_th)
            row = {"Video": video.name, "object": obj.id, "category": obj.category, "J": j, "F": f}
            if seen is not None:
                row["seen"] = obj.category in seen
            rows.append(row)
    if not rows:
        raise ValueError(f"{root}/{split}: no object has a frame to evaluate after its first")
    j_all = float(np.mean([r["J"] for r in rows]))
    f_all = float(np.mean([r["F"] for r in rows]))
    metrics = {"J&F": (j_all + f_all) / 2, "J": j_all, "F": f_all, "objects": len(rows)}
    if seen is not None:
        parts = []
        for label, flag in (("seen", True), ("unseen", False)):
            subset = [r for r in rows if r["seen"] == flag]
            if subset:
                metrics[f"J_{label}"] = float(np.mean([r["J"] for r in subset]))
                metrics[f"F_{label}"] = float(np.mean([r["F"] for r in subset]))
                parts += [metrics[f"J_{label}"], metrics[f"F_{label}"]]
        metrics["Overall"] = float(np.mean(parts))
    return metrics, rows


def format_vos(metrics: dict[str, float], rows: list[dict]) -> str:
    """The global table and the per-object J/F."""
    columns = [c for c in ("Overall", "J_seen", "F_seen", "J_unseen", "F_unseen", "J&F", "J", "F") if c in metrics]
    return "\n".join([_plain_table([metrics], columns), "", _plain_table(rows, ("Video", "object", "J", "F"))])
