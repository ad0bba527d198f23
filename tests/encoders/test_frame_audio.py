"""Frame (stride-8 ResNet-18) and audio (log-mel CNN) encoders."""

from __future__ import annotations

import pytest
import torch
import torchvision

from vidssl.encoders.audio import audio_cnn
from vidssl.encoders.frame import resnet18_dense


def test_frame_encoder_is_stride_8():
    torch.manual_seed(0)
    encoder = resnet18_dense(base_width=16)
    assert encoder.stride == 8 and encoder.out_channels == 128
    out = encoder(torch.randn(2, 3, 64, 64))
    assert tuple(out.shape) == (2, 128, 8, 8)
    # Odd sizes round up, as strided convolutions do.
    assert tuple(encoder(torch.randn(2, 3, 60, 44)).shape) == (2, 128, 8, 6)
    out.square().mean().backward()
    assert encoder.conv1.weight.grad.abs().sum() > 0


def test_frame_encoder_full_width_loads_into_torchvision_resnet18():
    encoder = resnet18_dense()
    assert encoder.out_channels == 512
    plain = torchvision.models.resnet18(weights=None)
    result = plain.load_state_dict(encoder.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    # Same weights, but layer3/layer4 keep the resolution: no stride-2 convolution after layer2.
    assert encoder.layer3[0].conv1.stride == (1, 1) and encoder.layer4[0].downsample[0].stride == (1, 1)
    assert plain.layer3[0].conv1.stride == (2, 2)


def test_frame_encoder_rejects_a_clip():
    with pytest.raises(ValueError, match="B×3×H×W"):
        resnet18_dense(base_width=4)(torch.randn(1, 3, 2, 32, 32))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_frame_encoder_padding_leaves_no_position_cue(mode):
    # A constant frame has nothing to tell its cells apart but the border: with zero padding the
    # border cells differ from the centre; with a content-preserving padding every cell is the same.
    constant = torch.full((1, 3, 64, 64), 0.3)
    zeros = resnet18_dense(base_width=4).eval()
    padded = resnet18_dense(base_width=4, padding_mode=mode).eval()
    padded.load_state_dict(zeros.state_dict())  # the same weights: only the padding differs
    with torch.no_grad():
        by_zeros, by_mode = zeros(constant), padded(constant)
    assert tuple(by_mode.shape) == tuple(by_zeros.shape) == (1, 32, 8, 8)
    assert (by_zeros - by_zeros[..., 4:5, 4:5]).abs().amax() > 1e-3
    torch.testing.assert_close(by_mode, by_mode[..., 4:5, 4:5].expand_as(by_mode), rtol=1e-5, atol=1e-6)
    assert all(m.padding_mode == mode for m in padded.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0))


def test_frame_encoder_rejects_an_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding_mode"):
        resnet18_dense(base_width=4, padding_mode="mirror")


def test_audio_encoder_shapes_and_gradients():
    torch.manual_seed(0)
    encoder = audio_cnn(base_width=8)
    assert encoder.out_channels == 64
    spectrogram = torch.randn(2, 1, 64, 100)  # 64 mel bins × 100 frames (1 s at a 10 ms hop)
    out = encoder(spectrogram)
    assert tuple(out.shape) == (2, 64, 8, 12)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in encoder.parameters())


def test_audio_encoder_rejects_bad_input():
    encoder = audio_cnn(base_width=4)
    with pytest.raises(ValueError, match="B×1×F×T"):
        encoder(torch.randn(2, 2, 64, 100))
    with pytest.raises(ValueError, match="at least 8"):
        encoder(torch.randn(2, 1, 64, 4))
