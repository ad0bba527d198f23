import pytest
import torch

from vidssl.datasets.transforms import ClipTransform, EvalTransform, LogMel, denormalize_video


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
