"""Small tracking benchmarks in the official layouts, drawn with the synthetic renderer's sprites.

    make_ytvos(out)   out/{train,valid,heldout}/{JPEGImages,Annotations}/<video>/, meta.json
                      (YouTube-VOS/MOSE layout; in every video object 2 enters at frame ``enter``;
                      valid holds only the first-mask annotations, as the servers' split does;
                      heldout is fully annotated and has a category that train lacks: seen/unseen)
    make_jhmdb(out)   out/Rename_Images/<class>/<video>/00001.png …,
                      out/joint_positions/<class>/<video>/joint_positions.mat (``pos_img`` 2×15×T,
                      1-based, written with scipy.io.savemat), out/splits/<class>_test_split1.txt
    make_vip(out)     out/Images/<video>/<frame>.jpg, out/Annotations/Category_ids/<video>/<frame>.png
                      (grey PNGs of the 20 part ids), out/lists/val_videos.txt

Sprites (textured shapes from `vidssl.datasets.synthetic`) move over the renderer's textured
backgrounds; every random choice comes from ``seed``. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vidssl.datasets.formats import write_mask
from vidssl.datasets.synthetic import SHAPES, TEXTURES, _background, _sprite

Array = np.ndarray


def _paste(frame: Array, labels: Array, rgb: Array, alpha: Array, x0: int, y0: int, label: int) -> None:
    """Blend a sprite onto ``frame`` at (x0, y0) (clipped at the border); its solid pixels get ``label``."""
    h, w = frame.shape[:2]
    side_y, side_x = alpha.shape
    fy0, fx0, fy1, fx1 = max(y0, 0), max(x0, 0), min(y0 + side_y, h), min(x0 + side_x, w)
    if fy0 >= fy1 or fx0 >= fx1:
        return
    a = alpha[fy0 - y0: fy1 - y0, fx0 - x0: fx1 - x0]
    frame[fy0:fy1, fx0:fx1] = a[..., None] * rgb[fy0 - y0: fy1 - y0, fx0 - x0: fx1 - x0] + \
        (1 - a[..., None]) * frame[fy0:fy1, fx0:fx1]
    labels[fy0:fy1, fx0:fx1][a >= 0.5] = label


def _look(rng: np.random.Generator, side: int) -> tuple[Array, Array, str]:
    shape, texture = str(rng.choice(SHAPES[:6])), str(rng.choice(TEXTURES))
    colors = rng.uniform(0.05, 0.95, (2, 3))
    rgb, alpha = _sprite(shape, texture, colors, side, rng)
    return rgb, alpha, shape


def _to_uint8(frame: Array) -> Array:
    return np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# YouTube-VOS / MOSE


def render_vos_video(rng: np.random.Generator, *, num_frames: int, enter: int, height: int, width: int,
                     categories: tuple[str, str]) -> tuple[Array, Array, dict]:
    """Frames T×H×W×3 uint8 and object-id maps T×H×W: object 1 from frame 0, object 2 entering
    from the left border at frame ``enter`` (no pixel of it before). Returns (frames, masks, objects)."""
    side1, side2 = int(min(height, width) * 0.35), int(min(height, width) * 0.3)
    rgb1, alpha1, _ = _look(rng, side1)
    rgb2, alpha2, _ = _look(rng, side2)
    background = _background(height, width, rng)
    start1 = np.array([rng.uniform(0.45, 0.6) * width, rng.uniform(0.1, 0.3) * height])
    velocity1 = rng.uniform(-0.01, 0.01, 2) * width
    y2 = rng.uniform(0.45, 0.6) * height
    speed2 = min(0.6 * width / max(num_frames - enter, 1), 0.06 * width)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        x1, y1 = start1 + velocity1 * t
        _paste(frame, masks[t], rgb1, alpha1, int(round(x1)), int(round(y1)), 1)
        if t >= enter:  # enters from the left: at frame `enter` two thirds of it are inside
            x2 = -side2 // 3 + speed2 * (t - enter)
            _paste(frame, masks[t], rgb2, alpha2, int(round(x2)), int(round(y2)), 2)
        frames[t] = _to_uint8(frame)
    objects = {1: categories[0], 2: categories[1]}
    return frames, masks, objects


def _write_vos_split(base: Path, videos: list[tuple[str, Array, Array, dict]], *, full: bool) -> None:
    meta: dict = {"videos": {}}
    for name, frames, masks, categories in videos:
        stems = [f"{5 * t:05d}" for t in range(len(frames))]  # YouTube-VOS names frames by 5s
        objects = {}
        for obj_id, category in categories.items():
            present = [s for s, m in zip(stems, masks) if (m == obj_id).any()]
            objects[str(obj_id)] = {"category": category, "frames": present}
        meta["videos"][name] = {"objects": objects}
        first = {obj["frames"][0] for obj in objects.values()}
        (base / "JPEGImages" / name).mkdir(parents=True, exist_ok=True)
        for t, stem in enumerate(stems):
            Image.fromarray(frames[t]).save(base / "JPEGImages" / name / f"{stem}.jpg", quality=95)
            if full:
                write_mask(base / "Annotations" / name / f"{stem}.png", masks[t])
            elif stem in first:  # the servers' split: only the objects whose first mask is on this frame
                starting = [int(k) for k, obj in objects.items() if obj["frames"][0] == stem]
                write_mask(base / "Annotations" / name / f"{stem}.png",
                           np.where(np.isin(masks[t], starting), masks[t], 0).astype(np.uint8))
    (base / "meta.json").write_text(json.dumps(meta, indent=1))


def make_ytvos(out: str | Path, *, num_videos: int = 2, num_frames: int = 12, enter: int = 5, height: int = 96,
               width: int = 128, seed: int = 0) -> Path:
    """A YouTube-VOS-style set (see the module doc); returns ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    seen = ("animal", "vehicle")
    for split, full, cats in (("train", True, seen), ("valid", False, seen), ("heldout", True, ("animal", "plant"))):
        videos = []
        for i in range(num_videos):
            frames, masks, objects = render_vos_video(rng, num_frames=num_frames, enter=enter, height=height,
                                                      width=width, categories=cats)
            videos.append((f"{split}{i:03d}", frames, masks, objects))
        _write_vos_split(out / split, videos, full=full)
    return out


# --------------------------------------------------------------------------------------------------
# JHMDB

# a stick figure's 15 joints (JHMDB order: neck, belly, face, right/left shoulder, right/left hip,
# right/left elbow, right/left knee, right/left wrist, right/left ankle), offsets in body heights
JOINT_OFFSETS = np.array([
    [0.0, -0.30], [0.0, 0.0], [0.0, -0.42], [-0.12, -0.28], [0.12, -0.28], [-0.07, 0.08], [0.07, 0.08],
    [-0.18, -0.12], [0.18, -0.12], [-0.08, 0.28], [0.08, 0.28], [-0.22, 0.02], [0.22, 0.02],
    [-0.09, 0.46], [0.09, 0.46]])
JOINT_COLOURS = np.array([[(k * 67) % 256, (k * 139 + 60) % 256, (k * 29 + 200) % 256] for k in range(15)]) / 255


def render_jhmdb_video(rng: np.random.Generator, *, num_frames: int, height: int, width: int) -> tuple[Array, Array]:
    """Frames T×H×W×3 uint8 of a stick figure of 15 coloured joint sprites walking across, and the
    joints' pixel positions 2×15×T (0-based x, y)."""
    background = _background(height, width, rng)
    body = 0.7 * height
    start = np.array([rng.uniform(0.2, 0.3) * width, 0.5 * height])
    velocity = np.array([rng.uniform(0.4, 0.5), rng.uniform(-0.05, 0.05)]) * width / max(num_frames, 1)
    side = max(int(body * 0.14), 5)
    # two tones of one colour per joint, so that a joint's average colour is its own
    sprites = [_sprite("circle", str(rng.choice(TEXTURES)), np.stack([c, 0.7 * c + 0.1]), side, rng)
               for c in JOINT_COLOURS]
    swing = rng.uniform(0.02, 0.05)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    positions = np.zeros((2, 15, num_frames))
    labels = np.zeros((height, width), dtype=np.uint8)
    for t in range(num_frames):
        centre = start + velocity * t
        offsets = JOINT_OFFSETS.copy()
        offsets[7:, 0] += swing * np.sin(0.6 * t) * np.sign(offsets[7:, 0])  # limbs swing
        joints = centre + offsets * body  # (15, 2)
        frame = background.copy()
        for k, (rgb, alpha) in enumerate(sprites):
            x0, y0 = int(round(joints[k, 0] - side / 2)), int(round(joints[k, 1] - side / 2))
            _paste(frame, labels, rgb, alpha, x0, y0, k + 1)
        positions[:, :, t] = joints.T
        frames[t] = _to_uint8(frame)
    return frames, positions


def make_jhmdb(out: str | Path, *, classes: tuple[str, ...] = ("walk", "wave"), videos_per_class: int = 1,
               num_frames: int = 10, height: int = 96, width: int = 128, seed: int = 0) -> Path:
    """A JHMDB-style set (see the module doc): every video is in the test part of split 1."""
    from scipy.io import savemat

    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for cls in classes:
        lines = []
        for i in range(videos_per_class):
            name = f"{cls}_{i:02d}"
            frames, positions = render_jhmdb_video(rng, num_frames=num_frames, height=height, width=width)
            folder = out / "Rename_Images" / cls / name
            folder.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(frames):
                Image.fromarray(frame).save(folder / f"{t + 1:05d}.png")
            mat = out / "joint_positions" / cls / name / "joint_positions.mat"
            mat.parent.mkdir(parents=True, exist_ok=True)
            # JHMDB's files are MATLAB's: 1-based pixel positions, pos_img 2×15×T
            savemat(mat, {"pos_img": positions + 1, "scale": np.ones(num_frames), "viewpoint": "E"})
            lines.append(f"{name}.avi 2")
        (out / "splits" / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# VIP

# rectangles of a person, (part id, x0, y0, x1, y1) in body-box fractions, drawn in order
VIP_PARTS = ((2, 0.35, 0.0, 0.65, 0.08), (13, 0.37, 0.06, 0.63, 0.2), (4, 0.25, 0.2, 0.75, 0.5),
             (14, 0.08, 0.2, 0.25, 0.5), (15, 0.75, 0.2, 0.92, 0.5), (8, 0.3, 0.5, 0.7, 0.62),
             (16, 0.3, 0.62, 0.48, 0.9), (17, 0.52, 0.62, 0.7, 0.9), (18, 0.28, 0.9, 0.48, 1.0),
             (19, 0.52, 0.9, 0.72, 1.0))


def render_vip_video(rng: np.random.Generator, *, num_frames: int, height: int, width: int) -> tuple[Array, Array]:
    """Frames T×H×W×3 uint8 of a figure of 10 textured parts moving, and part-id maps T×H×W (0..19)."""
    background = _background(height, width, rng)
    box_h, box_w = int(0.8 * height), int(0.4 * width)
    patches = {}
    for part, x0, y0, x1, y1 in VIP_PARTS:
        ph, pw = max(int((y1 - y0) * box_h), 2), max(int((x1 - x0) * box_w), 2)
        rgb, _ = _sprite("square", str(rng.choice(TEXTURES)), rng.uniform(0.05, 0.95, (2, 3)), max(ph, pw), rng)
        patches[part] = rgb[:ph, :pw]
    start = np.array([rng.uniform(0.05, 0.15) * width, 0.1 * height])
    velocity = np.array([rng.uniform(0.3, 0.4), rng.uniform(-0.02, 0.02)]) * width / max(num_frames, 1)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        bx, by = start + velocity * t
        for part, x0, y0, *_ in VIP_PARTS:
            rgb = patches[part]
            _paste(frame, masks[t], rgb, np.ones(rgb.shape[:2], dtype=np.float32),
                   int(round(bx + x0 * box_w)), int(round(by + y0 * box_h)), part)
        frames[t] = _to_uint8(frame)
    return frames, masks


def make_vip(out: str | Path, *, num_videos: int = 2, num_frames: int = 8, height: int = 64, width: int = 64,
             seed: int = 0) -> Path:
    """A VIP-style set (see the module doc)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(num_videos):
        name = f"videos{i + 1}"
        frames, masks = render_vip_video(rng, num_frames=num_frames, height=height, width=width)
        (out / "Images" / name).mkdir(parents=True, exist_ok=True)
        (out / "Annotations" / "Category_ids" / name).mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            stem = f"{25 * t + 1:012d}"  # VIP_Fine names frames by their index in the full video
            Image.fromarray(frames[t]).save(out / "Images" / name / f"{stem}.jpg", quality=95)
            Image.fromarray(masks[t]).save(out / "Annotations" / "Category_ids" / name / f"{stem}.png")
        names.append(name)
    (out / "lists").mkdir(parents=True, exist_ok=True)
    (out / "lists" / "val_videos.txt").write_text("\n".join(names) + "\n")
    return out


BENCHMARKS = {"ytvos": make_ytvos, "jhmdb": make_jhmdb, "vip": make_vip}


def make_benchmarks(out: str | Path, *, which: tuple[str, ...] = ("ytvos", "jhmdb", "vip"), seed: int = 0) -> dict:
    """Write the chosen sets under ``out/<name>``; returns {name: folder}."""
    unknown = sorted(set(which) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"unknown synthetic benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    return {name: BENCHMARKS[name](Path(out) / name, seed=seed) for name in which}
