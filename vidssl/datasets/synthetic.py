"""The embedded default corpus: synthetic audio-visual clips written as real MP4/AAC/JPEG/PNG files.

Each class is defined jointly by appearance (a textured sprite: shape, texture pattern, two-colour
palette), motion (bounce, slide, hop, orbit, zigzag, figure-eight, wave, …) and sound (pitch and
timbre; a note starts at every turning point of the motion — a bounce off a wall, the top of an arc —
and a soft drone follows the object's speed). A clip shows its class object among 1–2 smaller
distractors (neutral, or dressed as another class but moving aimlessly) over a textured, slowly
drifting background, with occlusions (random depth order) and a gradual lighting change, so that
correspondence cannot be solved by colour alone. Every random choice comes from one seed.

Layout written by `make_synthetic(out)`:

    out/manifest.csv                           path,label,split  (paths relative to out)
    out/videos/<name>.mp4                      H.264 (yuv420p) + AAC mono
    out/davis/JPEGImages/480p/<name>/00000.jpg every frame, at the video's resolution
    out/davis/Annotations/480p/<name>/00000.png every frame: 0 background, 1 the class object,
                                               2.. distractors (visible pixels only)
    out/davis/ImageSets/2017/{train,val}.txt   val = every val video; train = a few train videos per class
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vidssl.datasets.encode import Mp4Writer
from vidssl.datasets.formats import write_mask

Array = np.ndarray
Motion = Callable[[Array], Array]  # times (N,) in seconds -> object centres (N, 2) as (x, y) pixels


@dataclass(frozen=True)
class ClassSpec:
    """What defines one synthetic class. Speeds are in frame widths per second, periods in seconds."""

    name: str
    shape: str
    texture: str
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]  # RGB in [0, 1]
    motion: str
    speed: float
    period: float
    pitch: float  # fundamental, Hz
    partials: tuple[tuple[float, float], ...]  # (frequency ratio, amplitude): the timbre
    decay: float  # seconds: how long a note rings


CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("bouncer", "circle", "stripes", ((0.90, 0.15, 0.10), (1.00, 0.85, 0.20)), "bounce",
              0.75, 1.0, 220.0, ((1, 1.0), (2, 0.5), (3, 0.33), (4, 0.25), (5, 0.2)), 0.20),
    ClassSpec("slider", "square", "checker", ((0.10, 0.30, 0.90), (0.85, 0.90, 1.00)), "horizontal",
              0.90, 1.0, 330.0, ((1, 1.0), (3, 0.33), (5, 0.2), (7, 0.14)), 0.12),
    ClassSpec("hopper", "triangle", "dots", ((0.10, 0.65, 0.20), (0.95, 0.95, 0.60)), "hop",
              0.20, 0.7, 523.0, ((1, 1.0), (2.76, 0.5), (5.4, 0.25)), 0.30),
    ClassSpec("orbiter", "hexagon", "rings", ((0.55, 0.10, 0.80), (1.00, 0.60, 0.90)), "circle",
              0.0, 1.6, 294.0, ((1, 1.0),), 0.40),
    ClassSpec("zigzagger", "diamond", "waves", ((1.00, 0.50, 0.00), (0.30, 0.10, 0.00)), "zigzag",
              0.35, 0.6, 740.0, ((1, 1.0), (3, 0.5), (5, 0.3)), 0.08),
    ClassSpec("looper", "star", "spokes", ((0.00, 0.75, 0.80), (0.00, 0.20, 0.30)), "figure8",
              0.0, 2.2, 392.0, ((1, 1.0), (2, 0.7), (3, 0.5), (4, 0.35), (6, 0.2)), 0.25),
    ClassSpec("swimmer", "ring", "spiral", ((0.95, 0.20, 0.55), (0.20, 0.05, 0.30)), "wave",
              0.45, 1.2, 175.0, ((1, 1.0), (2, 0.2), (4, 0.6)), 0.35),
    ClassSpec("climber", "cross", "crosshatch", ((0.60, 0.50, 0.10), (0.95, 0.92, 0.80)), "vertical",
              0.80, 1.0, 988.0, ((1, 1.0), (1.5, 0.6), (2.5, 0.3)), 0.10),
)

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star", "ring", "cross")
TEXTURES = ("stripes", "checker", "dots", "rings", "waves", "spokes", "spiral", "crosshatch")


@dataclass
class SyntheticClip:
    """One rendered clip before encoding.

    frames: T×H×W×3 uint8; masks: T×H×W uint8 (0 background, 1 class object, 2.. distractors);
    audio: (S,) float32 in [-1, 1]; onsets: seconds at which a note starts; label: class index.
    """

    frames: Array
    masks: Array
    audio: Array
    onsets: Array
    label: int


# --------------------------------------------------------------------------------------------------
# appearance


def _polygon(u: Array, v: Array, sides: int, rotation: float) -> Array:
    """Polygon "radius": 1 on the edge of a regular polygon of circumradius 0.95."""
    normals = rotation + 2 * np.pi * np.arange(sides) / sides
    support = np.max(u[..., None] * np.cos(normals) + v[..., None] * np.sin(normals), axis=-1)
    return support / (0.95 * np.cos(np.pi / sides))


def _shape_radius(shape: str, u: Array, v: Array) -> Array:
    """A level function of the shape on the sprite's [-1, 1]² square: inside where it is <= 1."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    if shape == "circle":
        return r / 0.95
    if shape == "square":
        return np.maximum(abs(u), abs(v)) / 0.85
    if shape == "triangle":  # pointing up: image v grows downwards
        return _polygon(u, v, 3, np.pi / 2)
    if shape == "diamond":
        return (abs(u) + abs(v)) / 0.98
    if shape == "hexagon":
        return _polygon(u, v, 6, 0.0)
    if shape == "star":
        return r / (0.62 + 0.33 * np.cos(5 * theta + np.pi / 2))
    if shape == "ring":
        return np.maximum(r / 0.95, 0.4 / np.maximum(r, 1e-6))
    if shape == "cross":
        return np.minimum(np.maximum(abs(u) / 0.95, abs(v) / 0.36), np.maximum(abs(u) / 0.36, abs(v) / 0.95))
    raise ValueError(f"unknown synthetic shape {shape!r}; known: {SHAPES}")


def _texture(name: str, u: Array, v: Array, freq: float, angle: float, phase: float) -> Array:
    """A texture pattern in [0, 1] in the sprite's own coordinates (it moves with the sprite)."""
    a = u * np.cos(angle) + v * np.sin(angle)
    b = -u * np.sin(angle) + v * np.cos(angle)
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    w = 2 * np.pi * freq

    def square_wave(x: Array) -> Array:  # a soft-edged square wave keeps edges crisp but not aliased
        return 0.5 + 0.5 * np.tanh(4 * np.sin(x))

    if name == "stripes":
        return square_wave(w * a + phase)
    if name == "checker":
        return 0.5 + 0.5 * np.tanh(6 * np.sin(w * a + phase) * np.sin(w * b))
    if name == "dots":
        cell_a = (a * freq + phase / (2 * np.pi)) % 1.0 - 0.5
        cell_b = (b * freq) % 1.0 - 0.5
        return np.clip((0.3 - np.hypot(cell_a, cell_b)) * 12 + 0.5, 0, 1)
    if name == "rings":
        return square_wave(w * r + phase)
    if name == "waves":
        return square_wave(w * a + 2.0 * np.sin(w * b) + phase)
    if name == "spokes":
        return square_wave(6 * theta + phase)
    if name == "spiral":
        return square_wave(w * r + 3 * theta + phase)
    if name == "crosshatch":
        return np.maximum(square_wave(w * a + phase) > 0.8, square_wave(w * b) > 0.8).astype(float)
    raise ValueError(f"unknown synthetic texture {name!r}; known: {TEXTURES}")


def _sprite(shape: str, texture: str, colors: Array, side: int, rng: np.random.Generator) -> tuple[Array, Array]:
    """Render a textured sprite. Outputs: rgb side×side×3 float32 in [0, 1], alpha side×side float32."""
    coords = (np.arange(side) + 0.5) / side * 2 - 1
    u, v = np.meshgrid(coords, coords)  # (side, side) each, v downwards
    # anti-aliased edge: the level function moves by about 2/side per pixel
    alpha = np.clip((1 - _shape_radius(shape, u, v)) * side / 2 + 0.5, 0, 1)
    t = _texture(texture, u, v, freq=rng.uniform(2.0, 3.0), angle=rng.uniform(-0.3, 0.3) + np.pi / 4,
                 phase=rng.uniform(0, 2 * np.pi))
    rgb = colors[0] * (1 - t[..., None]) + colors[1] * t[..., None]
    rgb = rgb + rng.normal(0, 0.04, rgb.shape)  # fine grain that moves with the object
    return np.clip(rgb, 0, 1).astype(np.float32), alpha.astype(np.float32)


def _jitter_colors(colors: Array, rng: np.random.Generator, amount: float) -> Array:
    return np.clip(np.asarray(colors, dtype=np.float64) + rng.uniform(-amount, amount, (2, 3)), 0, 1)


def _background(height: int, width: int, rng: np.random.Generator) -> Array:
    """A random textured background: smooth colour blobs, a few gratings and fine grain. (H, W, 3) float32."""
    field = np.empty((height, width, 3), dtype=np.float32)
    coarse = rng.uniform(0.2, 0.8, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    for c in range(3):
        field[..., c] = np.asarray(Image.fromarray(coarse[..., c]).resize((width, height), Image.BICUBIC))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(rng.integers(2, 4)):
        angle = rng.uniform(0, np.pi)
        cycles = rng.uniform(3, 12) / max(height, width)
        grating = np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
        field += (rng.uniform(0.04, 0.12) * grating)[..., None] * rng.uniform(0.3, 1.0, 3).astype(np.float32)
    grain = rng.normal(0, 1, (height // 4 + 1, width // 4 + 1)).astype(np.float32)
    grain = np.asarray(Image.fromarray(grain).resize((width, height), Image.BILINEAR))
    field += 0.06 * grain[..., None]
    return np.clip(field, 0, 1)


# --------------------------------------------------------------------------------------------------
# motion


def _fold(p: Array, lo: float, hi: float) -> Array:
    """Reflect a free path off the walls lo and hi (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(p, lo)
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q <= span, q, 2 * span - q)


def _motion(spec_motion: str, speed: float, period: float, lo: Array, hi: Array, width: int,
            rng: np.random.Generator) -> Motion:
    """Draw one object's motion parameters; return its path as a function of time.

    lo, hi: (2,) bounds of the centre (x, y) that keep the whole sprite in the frame.
    """
    v = speed * width  # pixels per second
    start = rng.uniform(lo, hi)
    sign = rng.choice([-1.0, 1.0], size=2)
    phase = rng.uniform(0, 2 * np.pi)
    mid, half = (lo + hi) / 2, (hi - lo) / 2

    def path(x: Array, y: Array) -> Array:
        return np.stack([x, y], axis=-1)

    if spec_motion in ("bounce", "drift"):
        angle = rng.uniform(0.45, 1.1) if spec_motion == "bounce" else rng.uniform(0, np.pi / 2)
        vx, vy = sign[0] * v * np.cos(angle), sign[1] * v * np.sin(angle)
        return lambda t: path(_fold(start[0] + vx * t, lo[0], hi[0]), _fold(start[1] + vy * t, lo[1], hi[1]))
    if spec_motion == "horizontal":
        return lambda t: path(_fold(start[0] + sign[0] * v * t, lo[0], hi[0]), np.full_like(t, start[1]))
    if spec_motion == "vertical":
        return lambda t: path(np.full_like(t, start[0]), _fold(start[1] + sign[1] * v * t, lo[1], hi[1]))
    if spec_motion == "hop":  # a ball bouncing on the floor while drifting sideways
        height = rng.uniform(0.6, 0.95) * (hi[1] - lo[1])
        return lambda t: path(_fold(start[0] + sign[0] * v * t, lo[0], hi[0]),
                              hi[1] - height * np.abs(np.sin(np.pi * t / period + phase)))
    if spec_motion == "circle":
        radius = rng.uniform(0.55, 0.9) * half.min()
        centre = rng.uniform(lo + radius, hi - radius)
        omega = 2 * np.pi / period  # always clockwise on screen (image y points down)
        return lambda t: path(centre[0] + radius * np.cos(omega * t + phase),
                              centre[1] + radius * np.sin(omega * t + phase))
    if spec_motion == "zigzag":  # slow sideways, fast up and down within a band
        band = rng.uniform(0.3, 0.5) * half[1]
        centre_y = rng.uniform(lo[1] + band, hi[1] - band)
        vy = 4 * band / period
        return lambda t: path(_fold(start[0] + sign[0] * v * t, lo[0], hi[0]),
                              _fold(centre_y + sign[1] * vy * t, centre_y - band, centre_y + band))
    if spec_motion == "figure8":
        ax, ay = rng.uniform(0.7, 1.0) * half[0], rng.uniform(0.5, 0.9) * half[1]
        omega = 2 * np.pi / period
        return lambda t: path(mid[0] + ax * np.sin(omega * t + phase), mid[1] + ay * np.sin(2 * (omega * t + phase)))
    if spec_motion == "wave":
        amplitude = rng.uniform(0.4, 0.8) * half[1]
        centre_y = rng.uniform(lo[1] + amplitude, hi[1] - amplitude)
        return lambda t: path(_fold(start[0] + sign[0] * v * t, lo[0], hi[0]),
                              centre_y + amplitude * np.sin(2 * np.pi * t / period + phase))
    raise ValueError(f"unknown synthetic motion {spec_motion!r}")


def _turning_points(motion: Motion, duration: float, resolution: float = 1e-3, min_gap: float = 0.06) -> Array:
    """Times (seconds) at which the path reverses along x or y: wall bounces, tops of arcs, loop ends.

    Notes closer than `min_gap` (a corner hits two walls at once) merge into one.
    """
    times = np.arange(0, duration, resolution)
    velocity = np.diff(motion(times), axis=0)  # (N-1, 2)
    moving = np.abs(velocity) > 1e-9
    flips = (np.sign(velocity[1:]) != np.sign(velocity[:-1])) & moving[1:] & moving[:-1]
    events = np.sort(times[1:-1][flips.any(axis=1)])
    kept: list[float] = []
    for e in events:
        if not kept or e - kept[-1] >= min_gap:
            kept.append(float(e))
    return np.array(kept)


# --------------------------------------------------------------------------------------------------
# sound


def _sound(spec: ClassSpec, motion: Motion, onsets: Array, num_samples: int, sample_rate: int,
           rng: np.random.Generator) -> Array:
    """Notes of the class's pitch and timbre at every onset, a drone following the object's speed, and noise.

    Output: (num_samples,) float32 with peak 0.7.
    """
    t = np.arange(num_samples) / sample_rate
    f0 = spec.pitch * rng.uniform(0.97, 1.03)
    tone = np.zeros(num_samples)
    total = 0.0
    for ratio, amplitude in spec.partials:
        if f0 * ratio < 0.45 * sample_rate:  # keep every partial below Nyquist
            tone += amplitude * np.sin(2 * np.pi * f0 * ratio * t + rng.uniform(0, 2 * np.pi))
            total += amplitude
    tone /= max(total, 1e-6)

    since = t[None, :] - onsets[:, None]  # (events, S) seconds since each onset
    elapsed = np.maximum(since, 0)
    # a 4 ms attack (no click) and an exponential decay of the class's length
    notes = np.where(since >= 0, np.exp(-elapsed / spec.decay) * (1 - np.exp(-elapsed / 0.004)), 0)
    envelope = np.minimum(notes.sum(axis=0), 1.0)

    coarse_t = np.linspace(0, num_samples / sample_rate, 200)
    speed = np.linalg.norm(np.gradient(motion(coarse_t), coarse_t, axis=0), axis=1)
    drone = 0.15 * np.interp(t, coarse_t, speed / max(speed.max(), 1e-6))

    audio = tone * (envelope + drone) + rng.normal(0, rng.uniform(0.005, 0.02), num_samples)
    return (0.7 * audio / max(np.abs(audio).max(), 1e-6)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# one clip


@dataclass
class _Object:
    rgb: Array  # (s, s, 3)
    alpha: Array  # (s, s)
    motion: Motion
    centres: Array  # (T, 2) x, y pixels


def _place(obj: _Object, frame_index: int, height: int, width: int) -> tuple[slice, slice, slice, slice]:
    """Slices of the frame and of the sprite where the sprite lands (clipped at the frame border)."""
    side = obj.alpha.shape[0]
    x0 = int(round(obj.centres[frame_index, 0] - side / 2))
    y0 = int(round(obj.centres[frame_index, 1] - side / 2))
    fy0, fx0 = max(y0, 0), max(x0, 0)
    fy1, fx1 = min(y0 + side, height), min(x0 + side, width)
    return slice(fy0, fy1), slice(fx0, fx1), slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)


def _visible_fraction(objects: list[_Object], frame_index: int, height: int, width: int) -> list[float]:
    """Fraction of each object's own pixels that stay visible in one frame (objects are back to front)."""
    mask = np.zeros((height, width), dtype=np.int16)
    for k, obj in enumerate(objects):
        fy, fx, sy, sx = _place(obj, frame_index, height, width)
        mask[fy, fx][obj.alpha[sy, sx] >= 0.5] = k + 1
    return [np.count_nonzero(mask == k + 1) / max(np.count_nonzero(obj.alpha >= 0.5), 1)
            for k, obj in enumerate(objects)]


def render_clip(
    label: int,
    rng: np.random.Generator,
    *,
    height: int = 128,
    width: int = 128,
    fps: int = 16,
    num_frames: int = 56,
    sample_rate: int = 16000,
    num_objects: int = 3,
    num_classes: int = len(CLASSES),
) -> SyntheticClip:
    """Render one clip of class `label` (frames, instance masks, audio) from `rng`.

    Object 1 is the class object; objects 2..num_objects are smaller distractors, each either neutral
    (grey textures, random shape) or dressed as another of the first `num_classes` classes, drifting
    aimlessly. Depth order is random, masks hold visible pixels only, and every object shows at least
    half of itself in the first frame (the annotation label propagation starts from).
    """
    if not 0 <= label < num_classes <= len(CLASSES):
        raise ValueError(f"label {label} is not one of {num_classes} synthetic classes (at most {len(CLASSES)})")
    if num_objects < 1:
        raise ValueError(f"num_objects must be at least 1, got {num_objects}")
    spec = CLASSES[label]
    duration = num_frames / fps
    times = np.arange(num_frames) / fps
    small = min(height, width)

    # appearance: (rgb, alpha, motion name, speed, period) per object, the class object first
    looks = []
    side = int(round(small * rng.uniform(0.28, 0.34)))
    looks.append((*_sprite(spec.shape, spec.texture, _jitter_colors(spec.colors, rng, 0.06), side, rng),
                  spec.motion, spec.speed * rng.uniform(0.9, 1.1), spec.period * rng.uniform(0.9, 1.1)))
    for _ in range(num_objects - 1):
        side = int(round(small * rng.uniform(0.17, 0.25)))
        other = [c for c in range(num_classes) if c != label]
        if other and rng.random() < 0.5:
            look = CLASSES[rng.choice(other)]
            shape, texture, colors = look.shape, look.texture, _jitter_colors(look.colors, rng, 0.06)
        else:
            shape, texture = rng.choice(SHAPES), rng.choice(TEXTURES)
            grey = rng.uniform(0.15, 0.9, (2, 1)) + rng.uniform(-0.05, 0.05, (2, 3))
            colors = np.clip(grey, 0, 1)
        looks.append((*_sprite(shape, texture, colors, side, rng), "drift", rng.uniform(0.12, 0.4), 1.0))

    # motion: redraw until every object shows at least half of itself in the first frame
    depth = rng.permutation(num_objects)  # depth[k] = drawing position of object k (0 = back)
    for _ in range(100):
        objects = []
        for rgb, alpha, motion_name, speed, period in looks:
            s = alpha.shape[0]
            lo, hi = np.array([s / 2, s / 2]), np.array([width - s / 2, height - s / 2])
            motion = _motion(motion_name, speed, period, lo, hi, width, rng)
            objects.append(_Object(rgb, alpha, motion, motion(times)))
        back_to_front = [objects[k] for k in np.argsort(depth)]
        if min(_visible_fraction(back_to_front, 0, height, width)) >= 0.5:
            break
    ids = np.argsort(depth) + 1  # mask id of each drawn object: the class object is id 1

    # background larger than the frame, drifting slowly (a camera pan)
    margin = max(small // 16, 1)
    background = _background(height + 2 * margin, width + 2 * margin, rng)
    pan_start = rng.uniform(0, 2 * margin, 2)
    pan_end = rng.uniform(0, 2 * margin, 2)
    pan = np.rint(pan_start + (pan_end - pan_start) * (times / max(duration, 1e-6))[:, None]).astype(int)

    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for i in range(num_frames):
        ox, oy = pan[i]
        frame = background[oy:oy + height, ox:ox + width].copy()
        for obj, obj_id in zip(back_to_front, ids):
            fy, fx, sy, sx = _place(obj, i, height, width)
            alpha = obj.alpha[sy, sx, None]
            frame[fy, fx] = alpha * obj.rgb[sy, sx] + (1 - alpha) * frame[fy, fx]
            masks[i, fy, fx][obj.alpha[sy, sx] >= 0.5] = obj_id
        frames[i] = frame

    # lighting: a per-channel gain ramp over the clip and a soft light band sweeping across the frame
    gain_start = rng.uniform(0.75, 1.05) * rng.uniform(0.92, 1.08, 3)
    gain_end = gain_start * rng.uniform(1.2, 1.45) ** rng.choice([-1.0, 1.0])
    progress = (times / max(duration, 1e-6))[:, None]
    gain = (gain_start + (gain_end - gain_start) * progress).astype(np.float32)  # (T, 3)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (x * np.cos(angle) + y * np.sin(angle)) / (1.5 * max(height, width))
    sweep = rng.uniform(0.5, 1.5) * 2 * np.pi * progress[:, :, None]  # (T, 1, 1)
    light = 1 + 0.15 * np.cos(2 * np.pi * along[None] - sweep)  # (T, H, W)
    frames *= gain[:, None, None, :] * light[..., None].astype(np.float32)
    frames_uint8 = np.clip(frames * 255 + 0.5, 0, 255).astype(np.uint8)

    class_motion = objects[0].motion
    onsets = _turning_points(class_motion, duration)
    audio = _sound(spec, class_motion, onsets, int(round(duration * sample_rate)), sample_rate, rng)
    return SyntheticClip(frames_uint8, masks, audio, onsets, label)


# --------------------------------------------------------------------------------------------------
# files


def write_video(path: str | Path, frames: Array, audio: Array | None, *, fps: int, sample_rate: int = 16000,
                crf: int = 18, preset: str = "veryfast") -> None:
    """Encode T×H×W×3 uint8 frames as H.264 (yuv420p) and (S,) float audio as AAC mono into an MP4.

    H and W must be even (yuv420p halves the chroma planes).
    """
    path = Path(path)
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: frame size {height}×{width} must be even for yuv420p")
    with Mp4Writer(path, fps=fps, options={"crf": str(crf), "preset": preset},
                   audio_rate=sample_rate if audio is not None else None) as writer:
        for i in range(num_frames):
            writer.write(frames[i])
        if audio is not None:
            writer.write_audio(audio)


def _stratified_split(labels: Array, val_fraction: float, rng: np.random.Generator) -> list[str]:
    """A train/val split with about `val_fraction` of each class in val (none of a one-video class)."""
    splits = ["train"] * len(labels)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = 0 if len(members) < 2 else min(max(1, round(val_fraction * len(members))), len(members) - 1)
        for k in members[:n_val]:
            splits[k] = "val"
    return splits


def make_synthetic(
    out: str | Path,
    *,
    num_videos: int = 80,
    num_classes: int = 8,
    seed: int = 0,
    height: int = 128,
    width: int = 128,
    fps: int = 16,
    min_frames: int = 48,
    max_frames: int = 64,
    sample_rate: int = 16000,
    num_objects: tuple[int, int] | list[int] = (2, 3),
    val_fraction: float = 0.3,
    davis_train_per_class: int = 2,
    crf: int = 18,
    preset: str = "veryfast",
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> Path:
    """Write the synthetic audio-visual corpus into `out` and return `out` as a Path.

    Video k has class k % num_classes (classes are balanced), `min_frames..max_frames` frames (drawn
    per video) at `fps`, and `num_objects[0]..num_objects[1]` objects. About `val_fraction` of each
    class goes to the val split; DAVIS val = every val video, DAVIS train = the first
    `davis_train_per_class` train videos of each class. Everything is drawn from `seed`: the same
    arguments give the same manifest, frames and masks. `progress(done, total, name)` is called after
    each video. `crf` and `preset` are libx264's quality and speed settings. An `out` that already
    holds a corpus is an error unless `overwrite=True`, which deletes its manifest.csv, videos/ and
    davis/ first.
    """
    out = Path(out)
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(CLASSES)}, got {num_classes}")
    if num_videos < num_classes:
        raise ValueError(f"num_videos ({num_videos}) must be at least num_classes ({num_classes}): "
                         "every class needs a video")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
    if not 1 <= num_objects[0] <= num_objects[1]:
        raise ValueError(f"num_objects must be a range (low, high) with 1 <= low <= high, got {num_objects}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    owned = [out / "manifest.csv", out / "videos", out / "davis"]
    if any(p.exists() for p in owned):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a synthetic corpus; pass overwrite=True "
                                  "(overwrite=true on the command line) to replace it")
        for p in owned:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    # independent streams: the split, and one per video, so video k does not depend on num_videos
    split_seed, *video_seeds = np.random.SeedSequence(seed).spawn(num_videos + 1)
    labels = np.arange(num_videos) % num_classes
    splits = _stratified_split(labels, val_fraction, np.random.default_rng(split_seed))
    names = [f"v{k:03d}" for k in range(num_videos)]
    is_train = np.array(splits) == "train"
    davis_train = [int(k) for c in range(num_classes)
                   for k in np.flatnonzero((labels == c) & is_train)[:davis_train_per_class]]
    davis_sets = {"val": [k for k in range(num_videos) if splits[k] == "val"], "train": sorted(davis_train)}
    in_davis = set(davis_sets["val"]) | set(davis_sets["train"])

    (out / "videos").mkdir(parents=True, exist_ok=True)
    davis = out / "davis"
    for k in range(num_videos):
        rng = np.random.default_rng(video_seeds[k])
        clip = render_clip(int(labels[k]), rng, height=height, width=width, fps=fps,
                           num_frames=int(rng.integers(min_frames, max_frames + 1)), sample_rate=sample_rate,
                           num_objects=int(rng.integers(num_objects[0], num_objects[1] + 1)), num_classes=num_classes)
        write_video(out / "videos" / f"{names[k]}.mp4", clip.frames, clip.audio, fps=fps, sample_rate=sample_rate,
                    crf=crf, preset=preset)
        if k in in_davis:
            frame_dir = davis / "JPEGImages" / "480p" / names[k]
            frame_dir.mkdir(parents=True, exist_ok=True)
            for i, (frame, mask) in enumerate(zip(clip.frames, clip.masks)):
                Image.fromarray(frame).save(frame_dir / f"{i:05d}.jpg", quality=95)
                write_mask(davis / "Annotations" / "480p" / names[k] / f"{i:05d}.png", mask)
        if progress is not None:
            progress(k + 1, num_videos, names[k])

    image_sets = davis / "ImageSets" / "2017"
    image_sets.mkdir(parents=True, exist_ok=True)
    for split_name, members in davis_sets.items():
        (image_sets / f"{split_name}.txt").write_text("".join(f"{names[k]}\n" for k in members))
    # the manifest comes last: its presence marks a complete corpus
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for k in range(num_videos):
            writer.writerow([f"videos/{names[k]}.mp4", int(labels[k]), splits[k]])
    return out
