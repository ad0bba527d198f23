"""Label propagation: the windowed step against dense references, the protocol against a naive loop,
tracking a moving square with pixel features, feature sources, DAVIS output layout and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vidssl.datasets.formats import DavisSequence, read_mask, write_mask
from vidssl.eval.features import EncoderFeatures, PixelFeatures, build_feature_fn
from vidssl.eval.propagate import (
    _reference_step,
    first_frame_labels,
    propagate_dataset,
    propagate_labels,
    propagate_sequence,
    propagate_step,
)
from vidssl.configs import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def soft(*shape: int) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(*shape), dim=-1)


# --------------------------------------------------------------------------------------------------
# One step: windowed == dense-then-mask


@pytest.mark.parametrize("window", ["circle", "square"])
@pytest.mark.parametrize("h, w, n, radius, topk, tile, with_global", [
    (9, 13, 3, 2, 5, 4, True),      # interior and border tiles, unrestricted first frame
    (9, 13, 3, 2.5, 5, 3, False),   # everything restricted, tile not dividing the grid, a fractional radius
    (5, 7, 0, 1, 4, 2, True),       # only the first frame in context
    (6, 6, 2, 12, 50, 8, True),     # radius beyond the frame, k beyond the valid candidates
    (16, 20, 4, 3, 10, 5, True),
])
def test_windowed_step_equals_dense_reference(h, w, n, radius, topk, tile, with_global, window):
    torch.manual_seed(0)
    dim, k = 16, 4
    query, keys, values = unit(h, w, dim), unit(n, h, w, dim), soft(n, h, w, k)
    g_keys, g_values = (unit(1, h, w, dim), soft(1, h, w, k)) if with_global else (None, None)
    args = dict(global_keys=g_keys, global_values=g_values, topk=topk, radius=radius, temperature=0.07,
                window=window)
    fast = propagate_step(query, keys, values, tile=tile, **args)
    slow = _reference_step(query, keys, values, chunk=7, **args)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    assert torch.equal(fast.argmax(-1), slow.argmax(-1))
    torch.testing.assert_close(fast.sum(-1), torch.ones(h, w))


def test_tile_size_does_not_change_the_step():
    torch.manual_seed(1)
    query, keys, values = unit(11, 14, 8), unit(3, 11, 14, 8), soft(3, 11, 14, 3)
    outs = [propagate_step(query, keys, values, global_keys=keys[:1], global_values=values[:1], radius=3,
                           topk=6, tile=tile) for tile in (1, 3, 8, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# A whole video: the rolling context against a naive loop written from the protocol's description


def naive_propagation(feats: torch.Tensor, first_mask: torch.Tensor, *, n_context: int, topk: int, radius: int,
                      temperature: float, restrict_first: bool, window: str = "circle", pad_first: bool = True,
                      downsample: str = "bilinear") -> list[torch.Tensor]:
    """feats T×D×h×w, first_mask H×W with H, W even multiples of h, w. Python loops over every query and
    candidate."""
    num_frames, _, h, w = feats.shape
    height, width = first_mask.shape
    num_labels = int(first_mask.max()) + 1
    onehot = F.one_hot(first_mask.long(), num_labels).float()  # (H, W, K)
    blocks = onehot.view(h, height // h, w, width // w, num_labels)
    if downsample == "area":  # area downsampling of whole blocks = the mean of each block
        first_labels = blocks.mean(dim=(1, 3))  # (h, w, K)
    else:  # bilinear at each cell's centre, which falls between the two middle pixels of an even block
        sy, sx = height // h, width // w
        first_labels = blocks[:, sy // 2 - 1: sy // 2 + 1, :, sx // 2 - 1: sx // 2 + 1].mean(dim=(1, 3))

    def inside(dy: int, dx: int) -> bool:
        return dy * dy + dx * dx < radius * radius if window == "circle" else abs(dy) <= radius and abs(dx) <= radius

    # the official loader pads the video with copies of frame 0: they fill the context at first
    history: list[tuple[torch.Tensor, torch.Tensor]] = [(feats[0], first_labels)] * (n_context if pad_first else 0)
    outputs = [first_mask.to(torch.uint8)]
    for t in range(1, num_frames):
        recent = history[-n_context:] if n_context > 0 else []
        context = [(feats[0], first_labels, not restrict_first)] + [(f, l, False) for f, l in recent]
        pred = torch.zeros(h, w, num_labels)
        for y in range(h):
            for x in range(w):
                scored = []
                for f, labels, unrestricted in context:
                    for yy in range(h):
                        for xx in range(w):
                            if unrestricted or inside(yy - y, xx - x):
                                scored.append((float(feats[t][:, y, x] @ f[:, yy, xx]), labels[yy, xx]))
                scored.sort(key=lambda s: -s[0])
                best = scored[:topk]
                weights = torch.softmax(torch.tensor([s for s, _ in best]) / temperature, dim=0)
                pred[y, x] = sum(wt * lab for wt, (_, lab) in zip(weights, best))
        history.append((feats[t], pred))
        up = F.interpolate(pred.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", align_corners=False)
        outputs.append(up[0].argmax(0).to(torch.uint8))
    return outputs


@pytest.mark.parametrize("options", [
    dict(restrict_first=False),  # the official protocol (circle, padded context, bilinear)
    dict(restrict_first=True),
    dict(restrict_first=False, window="square", pad_first=False, downsample="area"),
])
def test_propagate_labels_matches_naive_protocol(options):
    torch.manual_seed(2)
    feats = F.normalize(torch.randn(6, 8, 5, 6), dim=1)  # T×D×h×w
    first = torch.zeros(20, 24, dtype=torch.long)  # stride 4
    first[2:10, 3:12], first[12:19, 14:22] = 1, 2
    protocol = dict(n_context=2, topk=4, radius=2, temperature=0.1, **options)
    expected = naive_propagation(feats, first, **protocol)
    for tile in (2, 8):
        got = list(propagate_labels(feats, first, tile=tile, **protocol))
        assert len(got) == 6
        for t, (a, b) in enumerate(zip(got, expected)):
            assert torch.equal(a, b), f"frame {t} differs (tile={tile})"


def test_features_are_computed_on_demand_once_per_frame():
    torch.manual_seed(3)
    feats = F.normalize(torch.randn(7, 4, 3, 3), dim=1)
    calls = []

    def feature_of(t: int) -> torch.Tensor:
        calls.append(t)
        return feats[t]

    maps = propagate_labels(feature_of, torch.zeros(12, 12, dtype=torch.long), 7, n_context=2, radius=1)
    assert calls == []  # nothing computed before the frames are asked for
    next(maps), next(maps), next(maps)
    assert calls == [0, 1, 2]
    rest = list(maps)
    assert len(rest) == 4 and calls == list(range(7))


def test_first_frame_labels_bilinear_and_area():
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:4, :1] = 1  # a quarter of the top-left 4×4 cell, away from its centre
    area = first_frame_labels(mask, (2, 2), downsample="area")
    torch.testing.assert_close(area[0, 0], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(area[1, 1], torch.tensor([1.0, 0.0]))
    # bilinear (the official INTER_LINEAR): read at the cell's centre, between pixels 1 and 2
    torch.testing.assert_close(first_frame_labels(mask, (2, 2))[0, 0], torch.tensor([1.0, 0.0]))
    mask[:4, :2] = 1
    torch.testing.assert_close(first_frame_labels(mask, (2, 2))[0, 0], torch.tensor([0.5, 0.5]))
    mask[:4, :3] = 1
    torch.testing.assert_close(first_frame_labels(mask, (2, 2))[0, 0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="downsample='nearest'"):
        first_frame_labels(mask, (2, 2), downsample="nearest")


# --------------------------------------------------------------------------------------------------
# Tracking: pixel features follow a moving square


def moving_square_video(num_frames: int = 10, size: int = 64, side: int = 16, step: int = 2) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    # a smooth bluish background texture and a red square: colour alone separates them
    background = np.zeros((size, size, 3), np.uint8)
    background[..., 2] = 150 + (rng.random((size // 8, size // 8)) * 80).repeat(8, 0).repeat(8, 1)
    background[..., 1] = 60
    frames, masks = [], []
    for t in range(num_frames):
        frame, mask = background.copy(), np.zeros((size, size), np.uint8)
        top, left = 16 + t // 2, 8 + step * t
        frame[top: top + side, left: left + side] = (220, 40, 30)
        mask[top: top + side, left: left + side] = 1
        frames.append(torch.from_numpy(frame))
        masks.append(mask)
    return frames, masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_pixel_features_track_a_moving_square():
    frames, masks = moving_square_video()
    pixels = PixelFeatures(stride=4)
    maps = list(propagate_labels(lambda t: pixels(frames[t]), masks[0], len(frames), radius=3, topk=5))
    last = maps[-1].numpy() == 1
    assert iou(last, masks[-1] == 1) > 0.7
    assert iou(last, masks[-1] == 1) > iou(last, masks[0] == 1) + 0.3  # it moved with the square


# --------------------------------------------------------------------------------------------------
# Feature sources


def test_pixel_features_shape_and_norm():
    frame = torch.randint(0, 256, (30, 45, 3), dtype=torch.uint8)
    f = PixelFeatures(stride=8)(frame)
    assert f.shape == (4, 4, 6)  # ceil(30/8), ceil(45/8)
    torch.testing.assert_close(f.norm(dim=0), torch.ones(4, 6))
    # equal colours give equal features, different colours different ones
    flat = torch.full((16, 16, 3), 90, dtype=torch.uint8)
    flat[:, 8:] = torch.tensor([200, 30, 30], dtype=torch.uint8)
    g = PixelFeatures(stride=8)(flat)
    assert torch.allclose(g[:, 0, 0], g[:, 1, 0]) and (g[:, 0, 0] @ g[:, 0, 1]) < 0.9


class TinyFrameEncoder(nn.Module):
    out_channels = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=4, padding=1)

    def forward(self, x):
        return self.conv(x)


class TinyVideoEncoder(nn.Module):
    out_channels = 5

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 5, (3, 3, 3), stride=(1, 4, 4), padding=(0, 1, 1))

    def forward(self, x):
        return self.conv(x)


def test_encoder_features_frame_and_video_encoders():
    torch.manual_seed(4)
    frame = torch.randint(0, 256, (32, 40, 3), dtype=torch.uint8)
    encoder = TinyFrameEncoder().train()
    f2 = EncoderFeatures(encoder)(frame)
    assert encoder.training  # eval mode only during the call: a training loop's encoder stays as it was
    assert f2.shape == (6, 8, 10)
    torch.testing.assert_close(f2.norm(dim=0), torch.ones(8, 10))
    video = EncoderFeatures(TinyVideoEncoder(), clip_len=3)  # temporal kernel 3: needs 3 frames
    assert video.video
    f3 = video(frame)
    assert f3.shape == (5, 8, 10)
    torch.testing.assert_close(f3.norm(dim=0), torch.ones(8, 10))
    with pytest.raises(RuntimeError):
        EncoderFeatures(TinyVideoEncoder(), clip_len=1)(frame)  # too short for the kernel: torch's error


def test_encoder_features_layer3_by_default_for_the_frame_resnet():
    from vidssl.encoders.frame import resnet18_dense
    from vidssl.datasets.transforms import normalize_video

    torch.manual_seed(5)
    encoder = resnet18_dense(base_width=4).eval()
    frame = torch.randint(0, 256, (24, 40, 3), dtype=torch.uint8)
    ran = []
    encoder.layer4.register_forward_hook(lambda *args: ran.append("layer4"))
    default = EncoderFeatures(encoder)(frame)
    assert default.shape == (16, 3, 5) and ran == []  # layer3 (4·base_width channels); layer4 never runs
    x = normalize_video(frame.permute(2, 0, 1)[:, None].float() / 255)[:, 0][None]
    with torch.no_grad():
        y = encoder.layer3(encoder.layer2(encoder.layer1(encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x)))))))
    torch.testing.assert_close(default, F.normalize(y[0], dim=0))
    assert EncoderFeatures(encoder, layer="output")(frame).shape == (32, 3, 5) and ran == ["layer4"]
    assert EncoderFeatures(encoder, layer="layer2")(frame).shape == (8, 3, 5)
    assert EncoderFeatures(TinyFrameEncoder()).layer == "output"  # other encoders: their output
    from vidssl.run import Exports
    from vidssl.tasks.mast import MAST

    mast_layer = Exports.of_task(MAST, {}).feature_layer  # what a MAST checkpoint exports
    assert EncoderFeatures(encoder, layer=mast_layer).layer == "output"  # MAST reads its output
    with pytest.raises(ValueError, match="layer='layer9'.*layer4"):
        EncoderFeatures(encoder, layer="layer9")(frame)


def test_build_feature_fn_choices():
    assert isinstance(build_feature_fn("pixels", stride=4), PixelFeatures)
    with pytest.raises(ValueError, match="features='flow'"):
        build_feature_fn("flow")
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        build_feature_fn("checkpoint")
    cfg = {"_target_": f"{__name__}.TinyFrameEncoder"}
    a, b = build_feature_fn("random", encoder_cfg=cfg), build_feature_fn("random", encoder_cfg=cfg)
    frame = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8)
    assert torch.equal(a(frame), b(frame))  # random = one fixed-seed initialisation


# --------------------------------------------------------------------------------------------------
# DAVIS layout in and out, and bad input


def write_sequence(root: Path, name: str, frames: list[torch.Tensor], masks: list[np.ndarray]) -> DavisSequence:
    frame_dir, mask_dir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
    frame_dir.mkdir(parents=True, exist_ok=True)
    paths, annotations = [], []
    for t, frame in enumerate(frames):
        paths.append(frame_dir / f"{10 * t:05d}.jpg")  # not 0..T-1: outputs must reuse the JPEG names
        Image.fromarray(frame.numpy()).save(paths[-1], quality=95)
    for t, mask in enumerate(masks):
        annotations.append(mask_dir / f"{10 * t:05d}.png")
        write_mask(annotations[-1], mask)
    return DavisSequence(name, paths, annotations)


def test_propagate_dataset_writes_davis_layout(tmp_path):
    frames, masks = moving_square_video(num_frames=5)
    root = tmp_path / "davis"
    write_sequence(root, "square", frames, masks[:1])
    write_sequence(root, "still", frames[:1] * 3, masks[:1])
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("square\nstill\n")
    folders = propagate_dataset(root, tmp_path / "res", PixelFeatures(stride=4), progress=False, radius=3)
    assert [f.name for f in folders] == ["square", "still"]
    assert sorted(p.name for p in (tmp_path / "res" / "square").iterdir()) == [f"{10 * t:05d}.png" for t in range(5)]
    np.testing.assert_array_equal(read_mask(tmp_path / "res" / "square" / "00000.png"), masks[0])
    with Image.open(tmp_path / "res" / "square" / "00040.png") as image:
        assert image.mode == "P" and image.size == (64, 64)
    # a still video keeps its first mask (up to the cell-level blur at the square's edges)
    still = read_mask(tmp_path / "res" / "still" / "00020.png") == 1
    assert iou(still, masks[0] == 1) > 0.9


def test_errors_name_the_sequence(tmp_path):
    frames, masks = moving_square_video(num_frames=3)
    pixels = PixelFeatures(stride=4)

    bad_size = write_sequence(tmp_path, "wrongsize", frames, [masks[0][:32]])
    with pytest.raises(ValueError, match="wrongsize.*32×64.*64×64"):
        propagate_sequence(bad_size, tmp_path / "res", pixels)

    no_first = write_sequence(tmp_path, "nofirst", frames, [])
    no_first = DavisSequence("nofirst", no_first.frames, [tmp_path / "later.png"])
    with pytest.raises(FileNotFoundError, match="nofirst.*first frame"):
        propagate_sequence(no_first, tmp_path / "res", pixels)

    void = masks[0].copy()
    void[0, 0] = 255
    with pytest.raises(ValueError, match="voidy.*255"):
        propagate_sequence(write_sequence(tmp_path, "voidy", frames, [void]), tmp_path / "res", pixels)
    with pytest.raises(ValueError, match="at most 3 objects|1..3"):
        propagate_labels(torch.zeros(2, 4, 4), torch.full((8, 8), 4), max_objects=3)

    mixed = write_sequence(tmp_path, "mixed", frames, masks[:1])
    Image.fromarray(frames[1][:48].numpy()).save(mixed.frames[1])
    with pytest.raises(ValueError, match="mixed.*00010.jpg"):
        propagate_sequence(mixed, tmp_path / "res", pixels)


# --------------------------------------------------------------------------------------------------
# End to end on the synthetic corpus: the command line, then the DAVIS evaluation


@pytest.mark.slow
def test_pixel_baseline_end_to_end_on_synthetic(synthetic_root, tmp_path):
    from vidssl.datasets.formats import davis
    from vidssl.eval.davis import evaluate_results

    # the first 8 validation sequences (symlinked), to keep the test short
    source = synthetic_root / "davis"
    davis_root = tmp_path / "davis"
    (davis_root / "ImageSets" / "2017").mkdir(parents=True)
    for folder in ("JPEGImages", "Annotations"):
        (davis_root / folder).symlink_to(source / folder, target_is_directory=True)
    names = (source / "ImageSets" / "2017" / "val.txt").read_text().split()[:8]
    (davis_root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "res"
    subprocess.run([sys.executable, str(REPO / "tools" / "propagate.py"), f"davis_root={davis_root}", f"out={out}",
                    "features=pixels", "split=val"], check=True, cwd=tmp_path)
    metrics, per_object, _ = evaluate_results(davis_root, out, split="val", progress=False)

    # the floor: every frame keeps the first frame's mask (the objects move, so this scores low)
    for seq in davis(davis_root, split="val"):
        first = read_mask(seq.annotations[0])
        for frame in seq.frames:
            write_mask(tmp_path / "still" / seq.name / f"{frame.stem}.png", first)
    still, _, _ = evaluate_results(davis_root, tmp_path / "still", split="val", progress=False)
    print(f"pixels {metrics}\nfirst mask kept {still}")
    assert len(per_object) >= 8
    # measured at seed 0 on these 8 sequences: pixels (stride 8) 0.41 (0.35 with the earlier protocol), first
    # mask kept 0.08
    assert metrics["J&F-Mean"] > still["J&F-Mean"] + 0.1, (metrics, still)
    assert 0.2 < metrics["J&F-Mean"] < 0.95, metrics


def test_propagate_config_composes_and_runs_random_features(tmp_path):
    import inspect

    from hydra import compose, initialize_config_dir

    frames, masks = moving_square_video(num_frames=3)
    root = tmp_path / "davis"
    write_sequence(root, "square", frames, masks[:1])
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("square\n")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("propagate", overrides=[f"davis_root={root}", f"out={tmp_path / 'res'}", "features=random"])
    protocol = {k: cfg[k] for k in ("n_context", "topk", "radius", "temperature", "restrict_first", "window",
                                     "pad_first", "downsample", "tile")}
    bound = inspect.signature(propagate_labels).bind(None, None, **protocol)  # every protocol key is an argument
    defaults = {k: p.default for k, p in inspect.signature(propagate_labels).parameters.items()}
    assert {k: defaults[k] for k in bound.kwargs} == protocol  # the config's defaults are the function's
    feature_fn = build_feature_fn(cfg.features, encoder_cfg=cfg.encoder, checkpoint=cfg.checkpoint,
                                  stride=cfg.stride, clip_len=cfg.clip_len, layer=cfg.layer, device=cfg.device)
    assert feature_fn(frames[0]).shape[1:] == (8, 8)  # resnet18_dense: stride 8
    propagate_dataset(cfg.davis_root, cfg.out, feature_fn, split=cfg.split, progress=False, **protocol)
    assert len(list((tmp_path / "res" / "square").glob("*.png"))) == 3


def test_benchmark_suite_small_runs_without_the_official_code():
    from vidssl.benchmarks.propagate import run

    result = run(channels=[8], height=48, width=64, frames=1, n_context=3, radius=3)
    assert [r["method"] for r in result["rows"]] == ["windowed", "dense_mask"]
    assert all(r["identical"] for r in result["rows"])
    assert result["config"]["official"] is None and result["config"]["window"] == "circle"
