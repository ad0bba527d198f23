"""MAST-style reconstruction: colour space, memory layout, window, exact copies, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidssl.datasets.transforms import normalize_video
from vidssl.tasks.mast import (
    MAST,
    lab_to_rgb,
    memory_frames,
    reconstruct,
    rgb_to_lab,
    window_mask,
)
from tiny_encoders import SpaceToDepth, TinyFrameEncoder


def test_lab_of_known_colours_and_round_trip() -> None:
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T
    lab = rgb_to_lab(rgb[None])[0].T  # (4 colours, Lab)
    # reference values of sRGB white, black, red and blue under D65
    expected = torch.tensor(
        [[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]]
    )
    torch.testing.assert_close(lab, expected, atol=0.05, rtol=0)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 4, 5, 6)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(image)), image, atol=1e-4, rtol=0)


def test_reconstruct_with_identity_attention_is_exact() -> None:
    torch.manual_seed(0)
    colours = torch.randn(2, 3, 10)
    assert torch.equal(reconstruct(torch.eye(10).expand(2, 10, 10), colours), colours)
    # a two-hot attention averages the two colours
    attention = torch.zeros(1, 1, 10)
    attention[0, 0, [2, 7]] = 0.5
    torch.testing.assert_close(reconstruct(attention, colours[:1]), colours[:1, :, [2, 7]].mean(-1, keepdim=True))


def test_window_mask_matches_slow_reference() -> None:
    mask = window_mask(3, 4, radius=1)
    for q in range(12):
        for k in range(12):
            (yq, xq), (yk, xk) = divmod(q, 4), divmod(k, 4)
            assert bool(mask[q, k]) == (abs(yq - yk) <= 1 and abs(xq - xk) <= 1)


def test_memory_frames_layout_and_error() -> None:
    assert memory_frames(4, short_term=2, long_term=1) == ([0], [1, 2])
    assert memory_frames(8, short_term=2, long_term=3) == ([0, 2, 4], [5, 6])
    assert memory_frames(3, short_term=2, long_term=0) == ([], [0, 1])
    with pytest.raises(ValueError, match="num_frames"):
        memory_frames(3, short_term=2, long_term=1)


def test_short_term_attention_stays_inside_the_window() -> None:
    torch.manual_seed(0)
    task = MAST(encoder=SpaceToDepth(), radius=1, short_term=1, long_term=1)
    query = nn.functional.normalize(torch.randn(2, 5, 4, 4), dim=1)
    memory = nn.functional.normalize(torch.randn(2, 5, 2, 4, 4), dim=1)
    attention = task.attention(query, memory, num_short=1)  # memory frame 0 long-term, 1 short-term
    assert attention.shape == (2, 16, 32)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 16))
    outside = ~window_mask(4, 4, 1)
    assert (attention[:, :, 16:][:, outside] == 0).all()
    assert (attention[:, :, :16] > 0).all()  # the long-term frame is read everywhere


def test_runs_on_the_library_frame_encoder() -> None:
    from vidssl.encoders import resnet18_dense

    torch.manual_seed(0)
    task = MAST(encoder=resnet18_dense(base_width=4), channel_dropout=1.0)
    out = task({"video": torch.randn(2, 3, 4, 48, 48)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and task.encoder.conv1.weight.grad.abs().sum() > 0


def test_forward_shapes_finite_and_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = TinyFrameEncoder()
    task = MAST(encoder=encoder, channel_dropout=1.0)
    out = task({"video": torch.randn(2, 3, 4, 32, 32)})
    assert set(out) == {"loss", "l1", "l1_static", "embedding_std", "embedding_rankme", "embedding_rank_fraction"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_frame_is_reconstructed_exactly_from_its_own_copy() -> None:
    # Every memory frame is a copy of the target and the cells are distinct, so as τ → 0 the
    # attention becomes the identity onto the copies and the reconstruction is exact.
    torch.manual_seed(0)
    frame = normalize_video(torch.rand(2, 3, 1, 32, 32))
    video = frame.expand(-1, -1, 4, -1, -1)
    task = MAST(encoder=SpaceToDepth(), temperature=1e-3, channel_dropout=0.0)
    out = task({"video": video})
    assert float(out["l1"]) < 1e-5
    assert float(out["loss"]) < 1e-9
    # and a frame unrelated to its memory is not
    assert float(task({"video": normalize_video(torch.rand(2, 3, 4, 32, 32))})["l1"]) > 0.02


def test_channel_dropout_neutralises_one_channel_per_clip() -> None:
    torch.manual_seed(0)
    lab = rgb_to_lab(torch.rand(6, 3, 2, 8, 8))
    dropped = MAST(encoder=SpaceToDepth(), channel_dropout=1.0).drop_channels(lab)
    neutral = torch.tensor([50.0, 0.0, 0.0]).view(3, 1, 1, 1)
    for clip, original in zip(dropped, lab):
        same_as_neutral = [bool((clip[c] == neutral[c]).all()) for c in range(3)]
        assert sum(same_as_neutral) == 1
        kept = [c for c in range(3) if not same_as_neutral[c]]
        assert torch.equal(clip[kept], original[kept])
    assert torch.equal(MAST(encoder=SpaceToDepth(), channel_dropout=0.0).drop_channels(lab), lab)


def test_bad_input_is_named() -> None:
    task = MAST(encoder=SpaceToDepth(), short_term=2, long_term=1)
    with pytest.raises(ValueError, match="at least short_term"):
        task({"video": torch.randn(1, 3, 3, 16, 16)})
    with pytest.raises(ValueError, match="B×3×T×H×W"):
        task({"video": torch.randn(1, 1, 4, 16, 16)})
