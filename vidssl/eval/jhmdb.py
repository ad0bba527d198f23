"""JHMDB pose-keypoint propagation and PCK, as videowalk computes them.

The protocol of ajabri/videowalk (commit 047f3f40135a4b1be2f837793b89c3dbfe7a6683: ``code/test.py``'s
JHMDB branch with ``code/data/jhmdb.py``, scored by ``code/eval/eval_pck.py``; command of videowalk
issue #10: ``--topk 10 --videoLen 7 --radius 12 --temperature 0.05 --cropSize 320``):

1. frames are resized to ``size``×``size`` (320: a square, whatever the aspect), bilinearly;
2. the 15 joints of the first frame (``joint_positions.mat``'s ``pos_img`` minus 1, scaled to the
   feature grid) become 15 label maps at feature resolution, each a Gaussian of σ = 0.5 cells drawn
   into a 4×4 window (`draw_gaussian`, videowalk's ``draw_labelmap_np``; σ = 0: a one-hot cell),
   plus a background channel that is 1 where every joint's map is 0;
3. these soft labels are propagated with `propagate_labels` (the DAVIS protocol, ``n_context`` 7);
4. each joint's position in a frame is read back from its propagated map (`read_keypoints`,
   videowalk's ``process_pose``): the 3 cells of highest score, averaged by their normalised
   scores; a joint whose map is all zero is lost (−1);
5. positions go back to the frame's pixels (x / feature width × frame width, y likewise);
6. PCK (`pck`, ``eval_pck.py``): in every frame but the first, a joint's error is its distance to
   the ground truth over 0.6 × the diagonal of the box around the frame's joints; the joints
   counted (also for the box) are those predicted (not lost); PCK@α per joint is the share of its
   errors ≤ α over all videos, and the reported PCK is the mean over the 15 joints.

Layout (the official release): ``Rename_Images/<class>/<video>/00001.png …``,
``joint_positions/<class>/<video>/joint_positions.mat``, ``splits/<class>_test_split<k>.txt``
(``<video>.avi 1|2``, 2 = test). A videowalk file list (``<frame folder> <joint_positions.mat>`` per
line) can be given instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from vidssl.eval.davis import _plain_table
from vidssl.eval.propagate import FeatureFn, propagate_labels, read_frame

NUM_JOINTS = 15
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)  # eval_pck.py prints these
TEST_PART = "2"  # JHMDB split files: 1 = train, 2 = test


@dataclass(frozen=True)
class JhmdbVideo:
    """One video: its name (``<class>/<video>``), frames (sorted by number) and joint_positions.mat."""

    name: str
    frames: tuple[Path, ...]
    joints: Path


def _frames(folder: Path) -> tuple[Path, ...]:
    frames = [p for p in folder.glob("*.png")]
    if not frames:
        raise FileNotFoundError(f"jhmdb: no frames (*.png) in {folder}")
    return tuple(sorted(frames, key=lambda p: int(p.stem)))


def jhmdb_videos(root: str | Path | None = None, *, split: int = 1,
                 filelist: str | Path | None = None) -> list[JhmdbVideo]:
    """The test videos of JHMDB split ``split`` under ``root``, or those of a videowalk ``filelist``."""
    if filelist is not None:
        videos = []
        for number, line in enumerate(Path(filelist).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{filelist}:{number}: expected '<frame folder> <joint_positions.mat>'")
            folder, mat = Path(parts[0]), Path(parts[1])
            videos.append(JhmdbVideo(f"{folder.parent.name}/{folder.name}", _frames(folder), mat))
        return videos
    root = Path(root)
    split_files = sorted((root / "splits").glob(f"*_test_split{split}.txt"))
    if not split_files:
        raise FileNotFoundError(f"jhmdb: no split files {root / 'splits'}/*_test_split{split}.txt")
    videos = []
    for split_file in split_files:
        cls = split_file.name[: -len(f"_test_split{split}.txt")]
        for line in split_file.read_text().splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[1] != TEST_PART:
                continue
            stem = parts[0].rsplit(".", 1)[0]
            mat = root / "joint_positions" / cls / stem / "joint_positions.mat"
            if not mat.is_file():
                raise FileNotFoundError(f"jhmdb: video {cls}/{stem} has no joint positions {mat}")
            videos.append(JhmdbVideo(f"{cls}/{stem}", _frames(root / "Rename_Images" / cls / stem), mat))
    if not videos:
        raise ValueError(f"jhmdb: split {split} lists no test video in {root / 'splits'}")
    return videos


def read_joints(path: str | Path) -> np.ndarray:
    """``pos_img`` of a joint_positions.mat, 0-based: 2×15×T (x, y pixels)."""
    from scipy.io import loadmat

    mat = loadmat(str(path))
    if "pos_img" not in mat:
        raise KeyError(f"{path}: no 'pos_img' (JHMDB's joint positions)")
    pos = np.asarray(mat["pos_img"], dtype=np.float64) - 1  # MATLAB's 1-based pixels
    if pos.ndim != 3 or pos.shape[:2] != (2, NUM_JOINTS):
        raise ValueError(f"{path}: pos_img has shape {pos.shape}, expected 2×{NUM_JOINTS}×T")
    return pos


# --------------------------------------------------------------------------------------------------
# Keypoints as label maps and back


def draw_gaussian(shape: tuple[int, int], point: Sequence[float], sigma: float = 0.5) -> np.ndarray:
    """One joint's label map, h×w: videowalk's ``draw_labelmap_np`` (after pose-hg-train).

    A Gaussian of σ (peak 1) sampled on a (6σ+1)-wide integer grid whose corner is the joint's
    position minus 3σ, truncated towards zero: its peak is at int(x − 3σ) + floor((6σ+1)/2), not at
    the joint itself. Cells outside the map are cut; a window entirely outside leaves the map empty.
    """
    h, w = shape
    out = np.zeros((h, w))
    ul = [int(point[0] - 3 * sigma), int(point[1] - 3 * sigma)]
    br = [int(point[0] + 3 * sigma + 1), int(point[1] + 3 * sigma + 1)]
    if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
        return out
    size = 6 * sigma + 1
    x = np.arange(0, size, 1, float)
    y = x[:, None]
    centre = size // 2
    g = np.exp(-((x - centre) ** 2 + (y - centre) ** 2) / (2 * sigma**2))
    gx, gy = (max(0, -ul[0]), min(br[0], w) - ul[0]), (max(0, -ul[1]), min(br[1], h) - ul[1])
    ix, iy = (max(0, ul[0]), min(br[0], w)), (max(0, ul[1]), min(br[1], h))
    out[iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return out


def keypoint_labels(points: np.ndarray, shape: tuple[int, int], sigma: float = 0.5) -> Tensor:
    """Soft labels of J joints at feature resolution: h×w×(J+1), channel 0 the background.

    Inputs: points 2×J (x, y in feature cells). Each joint is `draw_gaussian` (σ > 0) or a one-hot
    cell at (int(x), int(y)) when inside (σ = 0); the background is 1 where every joint's map is 0.
    """
    h, w = shape
    maps = np.zeros((h, w, points.shape[1]))
    for j in range(points.shape[1]):
        if sigma > 0:
            maps[..., j] = draw_gaussian(shape, points[:, j], sigma)
        else:
            x, y = int(points[0, j]), int(points[1, j])
            if 0 <= x < w and 0 <= y < h:
                maps[y, x, j] = 1.0
    labels = torch.from_numpy(maps).float()
    background = (labels.sum(-1) == 0).float()[..., None]
    return torch.cat([background, labels], dim=-1)


def read_keypoints(soft: Tensor, topk: int = 3) -> Tensor:
    """Joint positions read from propagated soft labels (videowalk's ``process_pose``).

    Input: h×w×(J+1) soft labels (channel 0 background). Output: 2×J (x, y in feature cells): the
    mean of the ``topk`` highest-scoring cells weighted by their scores normalised to sum 1; −1 for a
    joint whose map is all zero.
    """
    joints = soft[..., 1:]
    flat = joints.flatten(0, 1)  # (h*w, J)
    k = min(flat.shape[0], topk)
    values, ids = torch.topk(flat, k=k, dim=0)
    values = values / values.sum(0)[None]
    xx, yy = ids % joints.shape[1], ids // joints.shape[1]
    coords = torch.stack([(xx * values).sum(0), (yy * values).sum(0)], dim=0)
    coords[:, flat.sum(0) == 0] = -1
    return coords


def _resize(frame: Tensor, size: int | None) -> Tensor:
    """uint8 H×W×3 → size×size×3, bilinear without antialiasing (OpenCV's INTER_LINEAR), rounded."""
    if size is None or tuple(frame.shape[:2]) == (size, size):
        return frame
    x = frame.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def track_keypoints(feats: Callable[[int], Tensor] | Sequence[Tensor], num_frames: int, joints0: np.ndarray,
                    frame_size: tuple[int, int], input_size: tuple[int, int], *, sigma: float = 0.5,
                    topk_points: int = 3, name: str = "", **protocol) -> np.ndarray:
    """Propagate first-frame joints on given features; returns positions 2×J×T in feature cells.

    Inputs: feats (frame index → D×h×w, or a sequence of them) of the frames at ``input_size``
    (h_in, w_in); joints0 2×J (0-based pixels of the original frame of ``frame_size`` (H, W)).
    The joints go to the grid as videowalk scales them: × input size / frame size / (input size //
    grid size). ``protocol``: `propagate_labels`'s options. Output: `read_keypoints` of every frame
    (frame 0 from its own label maps); −1 where a joint is lost.
    """
    get = feats if callable(feats) else feats.__getitem__
    first = get(0)
    h, w = first.shape[-2:]
    (height, width), (new_h, new_w) = frame_size, input_size
    scale_y, scale_x = new_h // h, new_w // w  # videowalk's mapScale: input size // grid size
    points = np.stack([joints0[0] * float(new_w) / float(width) / scale_x,
                       joints0[1] * float(new_h) / float(height) / scale_y])
    labels = keypoint_labels(points, (h, w), sigma)
    soft = propagate_labels(lambda t: first if t == 0 else get(t), None, num_frames, first_labels=labels,
                            name=name, **protocol)
    return torch.stack([read_keypoints(s, topk_points) for s in soft], dim=-1).double().numpy()


def propagate_keypoints(frames: Sequence[Path], joints0: np.ndarray, feature_fn: FeatureFn, *, size: int | None = 320,
                        sigma: float = 0.5, topk_points: int = 3, name: str = "", **protocol) -> np.ndarray:
    """Propagate the first frame's joints through a video; returns positions 2×J×T in frame pixels.

    Inputs: frames (paths), joints0 2×J first-frame joints (0-based pixels of the original frame),
    size (frames resized to size×size; None keeps them). ``protocol``: `propagate_labels`'s options.
    Output: x, y in the original frame's pixels (feature cell / grid size × frame size, as
    ``eval_pck.py`` scales them); a lost joint is negative.
    """
    first = read_frame(frames[0])
    height, width = first.shape[:2]

    def feats(t: int) -> Tensor:
        frame = first if t == 0 else read_frame(frames[t])
        if frame.shape != first.shape:
            raise ValueError(f"jhmdb: {name}: frame {frames[t].name} is {tuple(frame.shape)}, "
                             f"the first {tuple(first.shape)}")
        return feature_fn(_resize(frame, size))

    input_size = (height, width) if size is None else (size, size)
    f0 = feats(0)
    coords = track_keypoints(lambda t: f0 if t == 0 else feats(t), len(frames), joints0, (height, width), input_size,
                             sigma=sigma, topk_points=topk_points, name=name, **protocol)
    return to_pixels(coords, tuple(f0.shape[-2:]), (height, width))


def to_pixels(coords: np.ndarray, grid: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """Feature-cell positions 2×J×T → frame pixels: x / grid width × frame width, y likewise."""
    out = np.array(coords, dtype=np.float64)
    out[0] = out[0] / float(grid[1]) * frame_size[1]
    out[1] = out[1] / float(grid[0]) * frame_size[0]
    return out


def propagate_jhmdb(out: str | Path, feature_fn: FeatureFn, root: str | Path | None = None, *, split: int = 1,
                    filelist: str | Path | None = None, size: int | None = 320, sigma: float = 0.5,
                    progress: bool = True, **protocol) -> Path:
    """Propagate every test video's joints; writes ``out/keypoints/<class>/<video>.npy`` (2×15×T pixels)."""
    out = Path(out)
    videos = jhmdb_videos(root, split=split, filelist=filelist)
    for video in tqdm(videos, desc="propagate jhmdb", unit="video", disable=not progress):
        joints = read_joints(video.joints)
        if joints.shape[2] < len(video.frames):
            raise ValueError(f"jhmdb: {video.name}: {joints.shape[2]} joint frames for {len(video.frames)} images")
        with torch.inference_mode():
            coords = propagate_keypoints(video.frames, joints[:, :, 0], feature_fn, size=size, sigma=sigma,
                                         name=video.name, **protocol)
        path = out / "keypoints" / f"{video.name}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, coords)
    return out


# --------------------------------------------------------------------------------------------------
# PCK


def pck_distances(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each joint's normalised errors over all videos' frames but the first (``eval_pck.py``).

    Inputs: per video, predictions and ground truth 2×J×T in pixels (a negative predicted x: lost).
    Output: J arrays of errors, each divided by 0.6 × the diagonal of the box of the frame's
    ground-truth joints that were predicted.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground truths")
    num_joints = gts[0].shape[1]
    dists: list[list[float]] = [[] for _ in range(num_joints)]
    for pred, gt in zip(preds, gts):
        frames = min(pred.shape[2], gt.shape[2])
        visible = pred[0, :, :frames] >= 0  # (J, T)
        for k in range(1, frames):
            vis = visible[:, k]
            # eval_pck.py's box: starts at x, y ∈ [1e6, −1] and grows over the visible joints
            minx, miny = min([1e6, *gt[0, vis, k]]), min([1e6, *gt[1, vis, k]])
            maxx, maxy = max([-1, *gt[0, vis, k]]), max([-1, *gt[1, vis, k]])
            box = 0.6 * np.linalg.norm(np.subtract([maxx, maxy], [minx, miny]))
            for j in np.flatnonzero(vis):
                d = np.linalg.norm(np.subtract([pred[0, j, k], pred[1, j, k]], [gt[0, j, k], gt[1, j, k]]))
                dists[j].append(d / box)
    return [np.asarray(d) for d in dists]


def pck(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
        thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float | list[float]]:
    """PCK@α (percent) for each threshold: the mean over joints of each joint's share of errors ≤ α.

    Returns ``{"PCK@0.1": mean, ..., "per_joint@0.1": [J values], ...}``.
    """
    dists = pck_distances(preds, gts)
    empty = [j for j, d in enumerate(dists) if d.size == 0]
    if empty:
        raise ValueError(f"joints {empty} are never predicted in any frame after the first: PCK is undefined")
    out: dict[str, float | list[float]] = {}
    for alpha in thresholds:
        per_joint = [100.0 * np.count_nonzero(d <= alpha) / d.size for d in dists]
        out[f"PCK@{alpha:g}"] = float(np.mean(per_joint))
        out[f"per_joint@{alpha:g}"] = per_joint
    return out


def evaluate_jhmdb(results: str | Path, root: str | Path | None = None, *, split: int = 1,
                   filelist: str | Path | None = None,
                   thresholds: Sequence[float] = THRESHOLDS) -> tuple[dict, str]:
    """PCK of ``results/keypoints/<class>/<video>.npy`` against the videos' joint_positions.mat."""
    results = Path(results)
    preds, gts = [], []
    for video in jhmdb_videos(root, split=split, filelist=filelist):
        path = results / "keypoints" / f"{video.name}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"jhmdb: no prediction for {video.name} (expected {path})")
        preds.append(np.load(path))
        gts.append(read_joints(video.joints))
    scores = pck(preds, gts, thresholds)
    metrics = {k: v for k, v in scores.items() if k.startswith("PCK")}
    metrics["videos"] = len(preds)
    table = _plain_table([{k: (round(v, 2) if isinstance(v, float) else v) for k, v in metrics.items()}],
                         list(metrics))
    return {**metrics, "per_joint": {k: v for k, v in scores.items() if k.startswith("per_joint")}}, table

