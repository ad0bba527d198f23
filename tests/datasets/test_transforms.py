import pytest
import torch

from vidssl.datasets.transforms import ClipTransform, EvalTransform, LogMel, denormalize_video, to_blocks


def frames(t=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g)


def test_clip_transform_shape_and_view_consistency():
    # Identical frames must stay identical after augmentation: one draw is shared by the whole clip.
    one = frames(t=1)
    clip = ClipTransform(size=32)(one.repeat(5, 1, 1, 1), torch.Generator().manual_seed(1))
    assert clip.shape == (3, 5, 32, 32) and clip.dtype == torch.float32
    for t in range(1, 5):
        assert torch.equal(clip[:, 0], clip[:, t])


def test_two_draws_give_independent_views_and_seed_reproduces():
    f = frames()
    tf = ClipTransform(size=32)
    g = torch.Generator().manual_seed(3)
    a, b = tf(f, g), tf(f, g)
    assert not torch.allclose(a, b)
    assert torch.equal(a, tf(f, torch.Generator().manual_seed(3)))


def test_no_augmentation_is_plain_resize():
    f = frames(h=32, w=32)
    tf = ClipTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, color_jitter=0.0, hue=0.0,
                       normalize=False)
    out = tf(f, torch.Generator().manual_seed(0))
    assert torch.allclose(out, f.permute(3, 0, 1, 2).float() / 255)


def test_normalisation_round_trip():
    f = frames()
    raw = EvalTransform(size=40, normalize=False)(f)
    norm = EvalTransform(size=40)(f)
    assert raw.shape == (3, 4, 40, 40)
    assert torch.allclose(denormalize_video(norm), raw.clamp(0, 1), atol=1e-5)


def test_rejects_wrong_frames():
    with pytest.raises(ValueError, match="uint8"):
        ClipTransform(size=8)(torch.zeros(2, 8, 8, 3), torch.Generator())


def test_logmel_shape_and_pitch():
    lm = LogMel(sample_rate=16000, n_mels=40)
    t = torch.arange(16000) / 16000
    low = lm(torch.sin(2 * torch.pi * 300 * t)[None])
    high = lm(torch.sin(2 * torch.pi * 3000 * t)[None])
    assert low.shape == (1, 40, 1 + 16000 // lm.hop_length)
    # the energy sits in a higher mel band for the higher tone
    assert high.mean(-1).argmax() > low.mean(-1).argmax()
    stereo = torch.stack([torch.sin(2 * torch.pi * 300 * t)] * 2)
    assert torch.allclose(lm(stereo), low, atol=1e-4)


def test_per_frame_colour_draws_differ_between_frames_but_crop_and_flip_are_shared():
    one = frames(t=1, h=40, w=40)
    video = one.repeat(6, 1, 1, 1)
    tf = ClipTransform(size=32, per_frame=True, color_jitter=0.5, hue=0.25, jitter_p=1.0, normalize=False)
    clip = tf(video, torch.Generator().manual_seed(0))
    assert clip.shape == (3, 6, 32, 32)
    assert not any(torch.allclose(clip[:, 0], clip[:, t]) for t in range(1, 6))  # each frame its own colours
    # Without colour changes the frames stay identical: the crop and flip are drawn once per clip.
    plain = ClipTransform(size=32, per_frame=True, color_jitter=0.0, hue=0.0, normalize=False)
    clip = plain(video, torch.Generator().manual_seed(0))
    assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(1, 6))
    assert torch.equal(tf(video, torch.Generator().manual_seed(4)), tf(video, torch.Generator().manual_seed(4)))


def test_channel_greyscale_copies_one_channel_per_frame():
    video = frames(t=8, h=32, w=32)
    tf = ClipTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, color_jitter=0.0, hue=0.0,
                       grayscale=1.0, grayscale_mode="channel", per_frame=True, normalize=False)
    clip = tf(video, torch.Generator().manual_seed(0))
    source = video.permute(3, 0, 1, 2).float() / 255  # C×T×H×W
    picked = []
    for t in range(8):
        assert torch.equal(clip[0, t], clip[1, t]) and torch.equal(clip[0, t], clip[2, t])
        picked.append(next(c for c in range(3) if torch.allclose(clip[0, t], source[c, t])))
    assert len(set(picked)) > 1  # the channel is drawn per frame
    half = ClipTransform(size=32, grayscale=0.5, grayscale_mode="channel", per_frame=True, color_jitter=0.0,
                         hue=0.0, normalize=False)
    clip = half(frames(t=40, h=32, w=32), torch.Generator().manual_seed(1))
    grey = [bool(torch.equal(clip[0, t], clip[1, t])) for t in range(40)]
    assert 8 < sum(grey) < 32  # about half the frames
    with pytest.raises(ValueError, match="grayscale_mode"):
        ClipTransform(grayscale_mode="average")


def test_greyscale_first_then_jitter_keeps_frames_grey_under_brightness_only():
    video = frames(t=3, h=32, w=32)
    tf = ClipTransform(size=32, color_jitter=0.5, hue=0.0, jitter_p=1.0, grayscale=1.0, grayscale_first=True,
                       normalize=False)
    clip = tf(video, torch.Generator().manual_seed(2))
    # Brightness, contrast and saturation of a grey image leave it grey.
    torch.testing.assert_close(clip[0], clip[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [{}, {"per_frame": True, "grayscale": 0.5, "grayscale_mode": "channel"},
                                     {"normalize": False}])
def test_block_layout_holds_the_same_values_as_the_clip_cut_into_blocks(options):
    # Predictive coding: the clip C×(N·L)×H×W is delivered as N×C×L×H×W; same draws, same values, bit for bit.
    f = frames(t=12)
    clip = ClipTransform(size=32, **options)(f, torch.Generator().manual_seed(4))
    blocks = ClipTransform(size=32, blocks=3, **options)(f, torch.Generator().manual_seed(4))
    assert blocks.shape == (3, 3, 4, 32, 32) and blocks.is_contiguous()
    for n in range(3):
        assert torch.equal(blocks[n], clip[:, 4 * n : 4 * n + 4])  # block n: frames 4n .. 4n+3
    assert torch.equal(blocks, to_blocks(clip.transpose(0, 1), 3))


def test_block_layout_must_divide_the_clip():
    with pytest.raises(ValueError, match="blocks=5 must divide the clip's 12 frames"):
        ClipTransform(size=32, blocks=5)(frames(t=12), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="ClipTransform.blocks must be >= 1"):
        ClipTransform(blocks=0)


def test_flow_clips_get_the_same_block_layout():
    from vidssl.datasets.flow import for_flow

    flow = for_flow(ClipTransform(size=32, blocks=2))
    assert flow.blocks == 2
    f = frames(t=6)
    clip = for_flow(ClipTransform(size=32))(f, torch.Generator().manual_seed(2))
    assert torch.equal(flow(f, torch.Generator().manual_seed(2)), to_blocks(clip.transpose(0, 1), 2))
