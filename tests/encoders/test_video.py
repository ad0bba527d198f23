"""Video encoders: documented feature-map shapes, gradients, and torchvision state-dict compatibility."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import video as tv_video

from vidssl.encoders import pool
from vidssl.encoders.video import r2d3d_18, r2d3d_34, mc3_18, r2plus1d_18, r3d_18, s3d

# name -> (factory, torchvision constructor, input clip shape, expected feature-map shape). Tiny clips keep
# these full-width models fast; S3D needs 32×32 to keep a spatial position after its five downsamplings.
TORCHVISION = {
    "r3d_18": (r3d_18, tv_video.r3d_18, (2, 3, 4, 16, 16), (2, 512, 1, 1, 1)),
    "mc3_18": (mc3_18, tv_video.mc3_18, (2, 3, 4, 16, 16), (2, 512, 4, 1, 1)),  # no temporal stride
    "r2plus1d_18": (r2plus1d_18, tv_video.r2plus1d_18, (2, 3, 8, 16, 16), (2, 512, 1, 1, 1)),
    "s3d": (s3d, tv_video.s3d, (2, 3, 8, 32, 32), (2, 1024, 1, 1, 1)),
}


def _assert_gradients_flow(module: torch.nn.Module, out: torch.Tensor) -> None:
    out.square().mean().backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first = next(module.parameters()).grad
    assert first.abs().sum() > 0  # the gradient reaches the very first convolution


def _plain_features(plain: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """The plain torchvision model's last feature map, through its own stages."""
    if hasattr(plain, "features"):  # S3D
        return plain.features(clip)
    return plain.layer4(plain.layer3(plain.layer2(plain.layer1(plain.stem(clip)))))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_encoder(name):
    torch.manual_seed(0)
    factory, tv_constructor, clip_shape, expected = TORCHVISION[name]
    encoder = factory()
    clip = torch.randn(clip_shape)

    # Its state dict loads into the plain torchvision model, only the classifier missing ...
    plain = tv_constructor(weights=None)
    result = plain.load_state_dict(encoder.state_dict(), strict=False)
    classifier = "fc" if hasattr(plain, "fc") else "classifier"
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith(classifier + ".") for k in result.missing_keys)
    # ... which then computes the same feature map.
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(clip), _plain_features(plain.eval(), clip))

    # The documented feature map, pooled features, and gradients in training mode.
    out = encoder.train()(clip)
    assert tuple(out.shape) == expected
    assert encoder.out_channels == expected[1]
    assert pool(out).shape == (2, expected[1])
    _assert_gradients_flow(encoder, out)


def test_video_encoder_rejects_a_non_clip():
    with pytest.raises(ValueError, match="B×3×T×H×W"):
        r2d3d_18(base_width=4)(torch.randn(2, 3, 32, 32))


def test_r2d3d_18_shapes_strides_and_signed_output():
    torch.manual_seed(0)
    encoder = r2d3d_18(base_width=16)
    assert encoder.out_channels == 64  # DPC keeps the last stage at 4 × base width (256 at 64)
    # DPC's block: 5 frames. Time is reduced only by the 3D stages (5 → 3 → 2), space by 32.
    out = encoder(torch.randn(2, 3, 5, 64, 64))
    assert tuple(out.shape) == (2, 64, 2, 2, 2)
    # DPC drops the ReLU after the last block, so the features its loss compares can be negative.
    assert out.min() < 0 < out.max()
    _assert_gradients_flow(encoder, out)
    # Stages 1-2 use 1×3×3 kernels, 3-4 use 3×3×3 ones.
    assert encoder.layer2[0].conv1.kernel_size == (1, 3, 3)
    assert encoder.layer3[0].conv1.kernel_size == (3, 3, 3)


def test_r2d3d_34_shapes_and_depth():
    torch.manual_seed(0)
    encoder = r2d3d_34(base_width=8)
    assert [len(getattr(encoder, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    out = encoder(torch.randn(1, 3, 8, 32, 32))
    assert tuple(out.shape) == (1, 32, 2, 1, 1)


def test_r2d3d_full_width_matches_dpc_size():
    # At base_width 64 the last stage has 256 channels, as DPC's resnet18_2d3d_full.
    encoder = r2d3d_18()
    assert encoder.out_channels == 256
    assert encoder.layer4[-1].conv2.out_channels == 256


def test_r2d3d_without_running_statistics_uses_batch_statistics_in_eval_mode():
    torch.manual_seed(0)
    encoder = r2d3d_18(base_width=4, track_running_stats=False)
    assert not any("running" in name for name in encoder.state_dict())  # DPC's checkpoints hold none
    x = torch.randn(2, 3, 4, 32, 32)
    train_out = encoder.train()(x)
    # Eval mode normalises with the batch's own statistics, exactly as in training.
    torch.testing.assert_close(encoder.eval()(x), train_out)
    tracked = r2d3d_18(base_width=4)
    assert any("running_mean" in name for name in tracked.state_dict())
