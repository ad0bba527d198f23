"""On-disk dataset layouts, each read into a list of `VideoEntry`.

Every loader has the signature `loader(root, *, split=..., **layout_options) -> list[VideoEntry]`;
`split=None` returns every entry. Entry paths are relative to `root`. Splits are named `train` and
`val`: official "test" lists (UCF101, HMDB51, VGG-Sound) become `val`, and `split="test"` is accepted
as an alias for them. A manifest that names files which do not exist fails at construction with
`MissingFilesError` (a `FileNotFoundError`) giving the count and the first few paths; a malformed
annotation file raises `DatasetLayoutError` (a `ValueError`) naming the file and line. Every loader
also takes ``modality="flow"`` with ``flow_root=DIR``: the same entries, pointing at the flow folders that
`tools/extract_flow.py` wrote (`with_modality`).

DAVIS-2017 is a set of frame folders rather than videos: `davis()` returns `DavisSequence`s, and
`read_mask` / `write_mask` read and write its palette PNGs.
"""

from __future__ import annotations

import csv
import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidssl.datasets.entry import VIDEO_EXTENSIONS, VideoEntry
from vidssl.datasets.flow import flow_entries


log = logging.getLogger(__name__)
_SHOWN_MISSING = 5  # how many missing paths an error message lists


class DatasetLayoutError(ValueError):
    """An annotation or manifest file that does not have the expected layout."""


class MissingFilesError(FileNotFoundError):
    """A manifest names files that do not exist; `missing` holds their paths relative to the root."""

    def __init__(self, source: str | Path, missing: Sequence[str], total: int) -> None:
        self.missing = list(missing)
        shown = ", ".join(self.missing[:_SHOWN_MISSING])
        more = f" (and {len(self.missing) - _SHOWN_MISSING} more)" if len(self.missing) > _SHOWN_MISSING else ""
        super().__init__(
            f"{source}: {len(self.missing)} of {total} files named by the manifest do not exist: {shown}{more}"
        )


# --------------------------------------------------------------------------------------------------
# helpers

MODALITIES: tuple[str, ...] = ("rgb", "flow")


def with_modality(loader: Callable[..., list[VideoEntry]]) -> Callable[..., list[VideoEntry]]:
    """Give a loader the options ``modality`` ("rgb": the videos; "flow": their extracted flow folders, see
    `vidssl.datasets.flow.flow_entries`) and ``flow_root`` (the folder `tools/extract_flow.py` wrote)."""

    @functools.wraps(loader)
    def wrapper(*args: Any, modality: str = "rgb", flow_root: str | None = None, **kwargs: Any) -> list[VideoEntry]:
        if modality not in MODALITIES:
            raise ValueError(f"unknown dataset.modality {modality!r}; choose one of {MODALITIES}")
        entries = loader(*args, **kwargs)
        if modality == "rgb":
            return entries
        return flow_entries(entries, flow_root)

    signature = inspect.signature(loader)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, default, annotation in (("modality", "rgb", "str"), ("flow_root", None, "str | None"))]
    # inspect.signature (Hydra config checks) then lists the two options beside the loader's own
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore
    return wrapper



def _existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    return root


def _check_exist(root: Path, entries: list[VideoEntry], source: str | Path, *,
                 skip_missing: bool = False) -> list[VideoEntry]:
    missing = [e.path for e in entries if not (root / e.path).exists()]
    if missing and not skip_missing:
        raise MissingFilesError(source, missing, len(entries))
    if missing:
        log.warning("%s: dropped %d of %d rows whose file does not exist (skip_missing), e.g. %s", source,
                    len(missing), len(entries), ", ".join(missing[:_SHOWN_MISSING]))
    gone = set(missing)
    return [e for e in entries if e.path not in gone]


def _eval_split(split: str | None) -> str | None:
    """Map the accepted split names onto vidssl's `train` / `val`."""
    if split is None:
        return None
    if split in ("val", "test"):
        return "val"
    if split == "train":
        return "train"
    raise ValueError(f"unknown split {split!r}: expected 'train', 'val' (alias 'test') or None")


def _index_files(directory: Path, root: Path) -> dict[str, str]:
    """Stem → path relative to `root` of every video file under `directory` (recursively).

    Kinetics and VGG-Sound downloads nest videos differently (flat, per label, per split): indexing the
    stems once finds a manifest row's file wherever it lies, at the cost of one directory walk.
    """
    index: dict[str, str] = {}
    if not directory.is_dir():
        return index
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                index.setdefault(stem, os.path.relpath(os.path.join(dirpath, name), root))
    return index


def _read_csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]


def _label_indices(names: Iterable[str]) -> dict[str, int]:
    """Class name → index of the name in sorted order (the convention of every loader here)."""
    return {name: i for i, name in enumerate(sorted(set(names)))}


# --------------------------------------------------------------------------------------------------
# generic layouts


@with_modality
def folder(
    root: str | Path,
    *,
    split: str | None = None,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    frame_dirs: bool = False,
) -> list[VideoEntry]:
    """Videos sorted into one folder per class.

    With `split=None` the layout is `root/<class>/<video>` and every entry has split `train`. With a
    split name it is `root/<split>/<class>/<video>`; labels then index the sorted union of the class
    folders of every split folder, so that `train` and `val` agree on them.
    `extensions` selects video files (case-insensitive); `frame_dirs=True` takes the sub-folders of the
    class folders instead, each a video stored as a folder of frames.

    Outputs: entries sorted by path; label = index of the class name in sorted order.
    """
    root = _existing_dir(root)
    if split is None:
        base, split_name, class_parents = root, "train", [root]
    else:
        base = root / split
        if not base.is_dir():
            raise FileNotFoundError(
                f"folder layout: {base} does not exist; with split={split!r} the layout is "
                f"root/<split>/<class>/<video>, with split=None it is root/<class>/<video>"
            )
        split_name = split
        class_parents = [p for p in sorted(root.iterdir()) if p.is_dir()]
    class_names = {c.name for parent in class_parents for c in parent.iterdir() if c.is_dir()}
    labels = _label_indices(class_names)
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}

    entries = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for item in sorted(class_dir.iterdir()):
            is_video = item.is_dir() if frame_dirs else (item.is_file() and item.suffix.lower() in wanted)
            if is_video:
                entries.append(VideoEntry(item.relative_to(root).as_posix(), labels[class_dir.name], split_name,
                                          label_name=class_dir.name))
    if not entries:
        kind = "frame folders" if frame_dirs else f"files with extensions {sorted(wanted)}"
        raise FileNotFoundError(f"folder layout: no {kind} found under {base}/<class>/")
    return entries


@with_modality
def csv_manifest(root: str | Path, *, manifest: str | Path, split: str | None = None,
                 skip_missing: bool = False) -> list[VideoEntry]:
    """A CSV manifest with a header naming the columns `path[,label][,split][,start,end]`.

    `manifest` is relative to `root` unless absolute; paths in it are relative to `root`. Labels may be
    integers (kept as they are) or class names (mapped to the index of the name in sorted order); an
    empty label is -1. A missing `split` column or cell means `train`; `start`/`end` are seconds.
    A row whose file does not exist is an error (`MissingFilesError`), or with `skip_missing=True` is
    dropped with one warning naming the count and the first paths.

    Outputs: entries in manifest order, those of `split` only unless it is None.
    """
    root = _existing_dir(root)
    manifest = Path(manifest) if Path(manifest).is_absolute() else root / manifest
    rows = _read_csv_rows(manifest)
    if not rows:
        raise DatasetLayoutError(f"{manifest}: empty manifest (expected a header with a 'path' column)")
    header = [h.strip() for h in rows[0]]
    unknown = set(header) - {"path", "label", "split", "start", "end"}
    if "path" not in header or unknown:
        raise DatasetLayoutError(
            f"{manifest}: header {header} must name the columns path[,label][,split][,start,end]"
            + (f"; unknown columns {sorted(unknown)}" if unknown else "")
        )
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DatasetLayoutError(f"{manifest}:{line}: {len(row)} fields, the header has {len(header)}")
        records.append((line, {k: v.strip() for k, v in zip(header, row)}))

    raw_labels = [r.get("label", "") for _, r in records]
    named = [x for x in raw_labels if x and not _is_int(x)]
    # one label column is read one way: all integers, or all names (then "3" is a name too)
    names = _label_indices(x for x in raw_labels if x) if named else {}

    entries = []
    for line, r in records:
        if not r["path"]:
            raise DatasetLayoutError(f"{manifest}:{line}: empty path")
        label_text = r.get("label", "")
        label = -1 if not label_text else (names[label_text] if names else int(label_text))
        start, end = (_float_or_none(r.get(k, ""), manifest, line, k) for k in ("start", "end"))
        if start is not None and end is not None and end <= start:
            raise DatasetLayoutError(f"{manifest}:{line}: end {end} is not after start {start}")
        entry = VideoEntry(r["path"], label, r.get("split", "") or "train", start, end,
                           label_name=label_text if names else "")
        if split is None or entry.split == split:
            entries.append(entry)
    return _check_exist(root, entries, manifest, skip_missing=skip_missing)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _float_or_none(text: str, source: Path, line: int, field: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise DatasetLayoutError(f"{source}:{line}: field {field!r} is not a number: {text!r}") from None


@with_modality
def synthetic(root: str | Path, *, split: str | None = None) -> list[VideoEntry]:
    """The synthetic corpus written by `vidssl.datasets.synthetic.make_synthetic` (`root/manifest.csv`)."""
    return csv_manifest(root, manifest="manifest.csv", split=split)


# --------------------------------------------------------------------------------------------------
# action recognition benchmarks


@with_modality
def ucf101(
    root: str | Path,
    *,
    split: str | None = "train",
    fold: int = 1,
    video_dir: str = "UCF-101",
    split_dir: str = "ucfTrainTestlist",
) -> list[VideoEntry]:
    """UCF101 with its official split files.

    Layout: `root/<split_dir>/{classInd.txt, trainlist0F.txt, testlist0F.txt}` (F = `fold`, 1..3) and the
    videos at `root/<video_dir>/<Class>/v_<Class>_gXX_cYY.avi` (`video_dir=""` when the class folders
    sit in root). The test list is the `val` split (`split="test"` is an alias). Labels are classInd's
    1-based indices minus one.
    """
    root = _existing_dir(root)
    if fold not in (1, 2, 3):
        raise ValueError(f"ucf101: fold must be 1, 2 or 3, got {fold}")
    wanted = _eval_split(split)
    lists = root / split_dir
    class_ind = lists / "classInd.txt"
    classes: dict[str, int] = {}
    for line, text in _text_lines(class_ind):
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetLayoutError(f"{class_ind}:{line}: expected '<index> <ClassName>', got {text!r}")
        # folder and file names disagree in case for one class (HandstandPushups): match case-insensitively
        classes[parts[1].lower()] = int(parts[0]) - 1

    entries = []
    for split_name, list_file in (("train", f"trainlist0{fold}.txt"), ("val", f"testlist0{fold}.txt")):
        if wanted not in (None, split_name):
            continue
        path = lists / list_file
        for line, text in _text_lines(path):
            rel = text.split()[0].replace("\\", "/")
            class_name = rel.split("/")[0].lower()
            if "/" not in rel or class_name not in classes:
                raise DatasetLayoutError(f"{path}:{line}: {rel!r} is not '<Class>/<video>' of a class in classInd.txt")
            entries.append(VideoEntry(_join(video_dir, rel), classes[class_name], split_name,
                                      label_name=rel.split("/")[0]))
    return _check_exist(root, entries, lists)


@with_modality
def hmdb51(
    root: str | Path,
    *,
    split: str | None = "train",
    fold: int = 1,
    video_dir: str = "videos",
    split_dir: str = "testTrainMulti_7030_splits",
) -> list[VideoEntry]:
    """HMDB51 with its official 70/30 split files.

    Layout: `root/<split_dir>/<class>_test_split<F>.txt` (F = `fold`, 1..3), each line
    `<video>.avi <id>` with id 1 = train, 2 = test (the `val` split; `split="test"` is an alias),
    0 = unused; videos at `root/<video_dir>/<class>/<video>.avi`. Labels index the sorted class names.
    """
    root = _existing_dir(root)
    if fold not in (1, 2, 3):
        raise ValueError(f"hmdb51: fold must be 1, 2 or 3, got {fold}")
    wanted = _eval_split(split)
    lists = root / split_dir
    suffix = f"_test_split{fold}.txt"
    files = sorted(lists.glob(f"*{suffix}")) if lists.is_dir() else []
    if not files:
        raise FileNotFoundError(f"hmdb51: no split files *{suffix} in {lists}")
    labels = _label_indices(f.name[: -len(suffix)] for f in files)
    split_ids = {"1": "train", "2": "val"}

    entries = []
    for path in files:
        class_name = path.name[: -len(suffix)]
        for line, text in _text_lines(path):
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetLayoutError(f"{path}:{line}: expected '<video> <0|1|2>', got {text!r}")
            split_name = split_ids.get(parts[1])
            if split_name is not None and wanted in (None, split_name):
                entries.append(VideoEntry(_join(video_dir, f"{class_name}/{parts[0]}"), labels[class_name], split_name,
                                          label_name=class_name))
    return _check_exist(root, entries, lists)


def _text_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    with open(path) as f:
        return [(i, line.strip()) for i, line in enumerate(f, start=1) if line.strip()]


def _join(directory: str, rel: str) -> str:
    return f"{directory.strip('/')}/{rel}" if directory else rel


@with_modality
def kinetics(
    root: str | Path,
    *,
    split: str | None = "train",
    annotations: str = "annotations/{split}.csv",
    videos: str = "{split}",
    skip_missing: bool = False,
) -> list[VideoEntry]:
    """Kinetics (400/600/700) from the official annotation CSVs.

    Layout: `root/annotations/{train,val,test}.csv` with the header
    `label,youtube_id,time_start,time_end,split[,is_cc]` (the `annotations` pattern changes the file
    names, e.g. `"kinetics_400_{split}.csv"`), and each clip as
    `<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>` anywhere under `root/<split>/` (flat, or in
    `<label>/` folders; the `videos` pattern changes the folder). Clips are already trimmed, so
    entries carry no start/end. Labels index the sorted class names of all annotation files present.
    Many Kinetics videos have vanished from YouTube: `skip_missing=True` drops rows whose file is
    absent instead of failing.
    """
    root = _existing_dir(root)
    splits = ["train", "val", "test"]
    if split is not None and split not in splits:
        raise ValueError(f"kinetics: unknown split {split!r}, expected one of {splits} or None")

    tables: dict[str, list[dict[str, str]]] = {}
    for name in splits:
        path = root / annotations.format(split=name)
        if path.is_file():
            tables[name] = _kinetics_rows(path)
    requested = splits if split is None else [split]
    if not any(name in tables for name in requested):
        raise FileNotFoundError(f"kinetics: no annotation file {root / annotations.format(split=requested[0])}")
    labels = _label_indices(r["label"] for rows in tables.values() for r in rows if r.get("label"))

    entries, missing, total = [], [], 0
    for name in requested:
        index = _index_files(root / videos.format(split=name), root)
        for r in tables.get(name, []):
            stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
            total += 1
            if stem not in index:
                missing.append(f"{videos.format(split=name)}/{stem}.mp4")
                continue
            label = labels[r["label"]] if r.get("label") else -1
            entries.append(VideoEntry(index[stem], label, "val" if name == "test" else name,
                                      label_name=r.get("label") or ""))
    if missing and not skip_missing:
        raise MissingFilesError(root / annotations.format(split=requested[0]), missing, total)
    return entries


def _kinetics_rows(path: Path) -> list[dict[str, str]]:
    rows = _read_csv_rows(path)
    header = [h.strip() for h in rows[0]] if rows else []
    needed = {"youtube_id", "time_start", "time_end"}
    if not needed <= set(header):
        raise DatasetLayoutError(f"{path}: header {header} lacks {sorted(needed - set(header))}")
    return [dict(zip(header, (c.strip() for c in row))) for row in rows[1:]]


@with_modality
def vggsound(
    root: str | Path,
    *,
    split: str | None = "train",
    annotations: str = "vggsound.csv",
    video_dir: str = "video",
    skip_missing: bool = False,
) -> list[VideoEntry]:
    """VGG-Sound from its official CSV.

    Layout: `root/vggsound.csv` without a header, rows `youtube_id,start_seconds,label,train|test`
    (the test rows are the `val` split; `split="test"` is an alias), and each 10-second clip anywhere
    under `root/<video_dir>/` named `<id>_<start:06d>.<ext>` (the common download),
    `<id>_<start>_<start+10>.<ext>` or `<id>_<start:06d>_<start+10:06d>.<ext>`. Labels index the sorted
    class names. `skip_missing=True` drops rows whose file is absent instead of failing.
    """
    root = _existing_dir(root)
    wanted = _eval_split(split)
    path = root / annotations
    rows = _read_csv_rows(path)
    records = []
    for line, row in enumerate(rows, start=1):
        if len(row) != 4 or not _is_int(row[1].strip()) or row[3].strip() not in ("train", "test"):
            raise DatasetLayoutError(f"{path}:{line}: expected 'youtube_id,start_seconds,label,train|test', got {row}")
        records.append((row[0].strip(), int(row[1]), row[2].strip(), "train" if row[3].strip() == "train" else "val"))
    labels = _label_indices(r[2] for r in records)
    index = _index_files(root / video_dir, root)

    entries, missing, total = [], [], 0
    for youtube_id, start, label, split_name in records:
        if wanted not in (None, split_name):
            continue
        total += 1
        end = start + 10  # VGG-Sound clips are 10 s long
        stems = (f"{youtube_id}_{start:06d}", f"{youtube_id}_{start}_{end}", f"{youtube_id}_{start:06d}_{end:06d}")
        found = next((index[s] for s in stems if s in index), None)
        if found is None:
            missing.append(_join(video_dir, f"{stems[0]}.mp4"))
        else:
            entries.append(VideoEntry(found, labels[label], split_name, label_name=label))
    if missing and not skip_missing:
        raise MissingFilesError(path, missing, total)
    return entries


# --------------------------------------------------------------------------------------------------
# DAVIS-2017


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map that DAVIS uses: bit k of an index's three low-order bit groups goes
    to bit 7-k of red, green and blue. Output: 256×3 uint8."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


DAVIS_PALETTE: np.ndarray = _voc_palette()
DAVIS_PALETTE.setflags(write=False)


@dataclass(frozen=True)
class DavisSequence:
    """One DAVIS sequence: sorted frame JPEGs and sorted palette-PNG annotations (at least the first frame's)."""

    name: str
    frames: list[Path]
    annotations: list[Path]


def davis(root: str | Path, *, split: str | None = "val", resolution: str = "480p") -> list[DavisSequence]:
    """DAVIS-2017: `root/JPEGImages/<resolution>/<seq>/*.jpg`, `root/Annotations/<resolution>/<seq>/*.png`,
    sequence names in `root/ImageSets/2017/<split>.txt` (`split=None`: every list there).

    Raises an error naming the sequence when its frames are missing or it has no annotation for its
    first frame.
    """
    root = _existing_dir(root)
    sets = root / "ImageSets" / "2017"
    list_files = sorted(sets.glob("*.txt")) if split is None else [sets / f"{split}.txt"]
    if not list_files or not all(f.is_file() for f in list_files):
        raise FileNotFoundError(f"davis: no sequence list {sets / f'{split}.txt' if split else sets / '*.txt'}")
    names = list(dict.fromkeys(text for f in list_files for _, text in _text_lines(f)))

    sequences = []
    for name in names:
        frame_dir = root / "JPEGImages" / resolution / name
        mask_dir = root / "Annotations" / resolution / name
        frames = sorted(frame_dir.glob("*.jpg")) if frame_dir.is_dir() else []
        if not frames:
            raise FileNotFoundError(f"davis: sequence {name!r} has no frames (*.jpg) in {frame_dir}")
        annotations = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
        if not annotations or annotations[0].stem != frames[0].stem:
            raise FileNotFoundError(
                f"davis: sequence {name!r} has no annotation of its first frame {frames[0].name} "
                f"(expected {mask_dir / (frames[0].stem + '.png')})"
            )
        sequences.append(DavisSequence(name, frames, annotations))
    return sequences


def read_mask(path: str | Path) -> np.ndarray:
    """Read a DAVIS palette PNG into object indices. Output: H×W uint8 (0 background, 1..N objects).

    Palette ("P") and greyscale ("L") PNGs give their stored indices; an RGB PNG is mapped back
    through `DAVIS_PALETTE`, and a colour outside it is an error.
    """
    path = Path(path)
    with Image.open(path) as image:
        if image.mode in ("P", "L"):
            return np.array(image, dtype=np.uint8)
        if image.mode not in ("RGB", "RGBA"):
            raise ValueError(f"{path}: mask has image mode {image.mode!r}; expected a palette PNG")
        rgb = np.array(image.convert("RGB"), dtype=np.int64)
    return palette_indices(rgb_codes(rgb), path)


def rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """Colours as 24-bit integers: H×W×3 integers → H×W int64 (0xRRGGBB)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def palette_indices(codes: np.ndarray, path: str | Path, hint: str = "") -> np.ndarray:
    """The DAVIS palette index of every colour (`rgb_codes`): H×W uint8. A colour outside the palette is an
    error naming ``path`` (and ``hint``, what to do instead)."""
    # the VOC palette's 256 colours are all distinct
    palette_codes = rgb_codes(DAVIS_PALETTE)
    order = np.argsort(palette_codes)
    position = np.searchsorted(palette_codes, codes, sorter=order).clip(max=255)
    indices = order[position]
    unknown = np.unique(codes[palette_codes[indices] != codes])
    if unknown.size:
        colours = [f"#{int(c):06x}" for c in unknown[:5]]
        raise ValueError(f"{path}: RGB mask has colours outside the DAVIS palette{hint}: {colours}")
    return indices.astype(np.uint8)


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write object indices (H×W, integers in 0..255) as a DAVIS palette PNG, creating parent folders."""
    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: a mask must be H×W, got shape {mask.shape}")
    if mask.size and (not np.issubdtype(mask.dtype, np.integer) or mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{path}: mask values must be integers in 0..255 (dtype {mask.dtype})")
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(DAVIS_PALETTE.tobytes())  # turns the greyscale image into a palette ("P") image
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
