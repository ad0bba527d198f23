"""timm/torchvision backbones and the official weight formats, against features the official code recorded.

The fixtures (tests/fixtures/backbones/, see OFFICIAL.md there) are tiny random-init ViTs saved by
facebookresearch/dino, dinov2 and dinov3 in their own formats, with the patch tokens their own
``get_intermediate_layers`` computed on a fixed input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidssl.encoders.backbones import TimmBackbone, TorchvisionResNet, default_pos_resample
from vidssl.encoders.weights import load_backbone_weights, read_state_dict

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "backbones"
TINY = dict(embed_dim=8, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def recorded():
    return torch.load(HERE / "features.pt", weights_only=True)


def the_input(recorded, family: str) -> torch.Tensor:
    shape = recorded["input_shapes"][family]
    return torch.randn(shape, generator=torch.Generator().manual_seed(recorded["input_seed"]))


def tokens(backbone: TimmBackbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(x).flatten(2).transpose(1, 2)  # B×(h·w)×D, the official layout


CASES = [
    # (fixture key, timm name, file, checkpoint_key, extra timm kwargs, input family)
    ("dino_pretrain", "vit_small_patch8_224.dino", "dino_pretrain.pth", None, dict(img_size=32), "dino"),
    ("dino_teacher", "vit_small_patch8_224.dino", "dino_checkpoint.pth", "teacher", dict(img_size=32), "dino"),
    ("dino_student", "vit_small_patch8_224.dino", "dino_checkpoint.pth", "student", dict(img_size=32), "dino"),
    ("dinov2", "vit_small_patch14_dinov2", "dinov2.pth", None, dict(img_size=28), "dinov2"),
    ("dinov2_reg4", "vit_small_patch14_reg4_dinov2", "dinov2_reg4.pth", None, dict(img_size=28), "dinov2"),
    ("dinov3", "vit_small_patch16_dinov3_qkvb", "dinov3.pth", None, dict(img_size=32, patch_size=8), "dinov3"),
    ("dinov3", "vit_small_patch16_dinov3_qkvb", "timm.safetensors", None, dict(img_size=32, patch_size=8), "dinov3"),
]


@pytest.mark.parametrize("key,name,file,checkpoint_key,kwargs,family", CASES,
                         ids=[f"{c[2]}:{c[3] or c[0]}" for c in CASES])
def test_official_formats_give_the_official_features(recorded, key, name, file, checkpoint_key, kwargs, family):
    backbone = TimmBackbone(model=name, weights=HERE / file, checkpoint_key=checkpoint_key,
                            model_kwargs={**TINY, **kwargs})
    x = the_input(recorded, family)
    out = tokens(backbone, x)
    assert out.shape == recorded[key].shape
    assert (out - recorded[key]).abs().max() <= 1e-5


def test_timm_resampling_is_not_dino_resampling(recorded):
    """The offset resampling matters: timm's own resampling misses DINO's features by far more than 1e-5."""
    timm_way = TimmBackbone(model="vit_small_patch8_224.dino", weights=HERE / "dino_pretrain.pth",
                            pos_resample="timm", model_kwargs={**TINY, "img_size": 32})
    assert (tokens(timm_way, the_input(recorded, "dino")) - recorded["dino_pretrain"]).abs().max() > 1e-3
    assert default_pos_resample("vit_base_patch8_224.dino") == "offset"
    assert default_pos_resample("vit_small_patch14_dinov2") == "offset"
    assert default_pos_resample("vit_small_patch14_reg4_dinov2") == "timm"
    assert default_pos_resample("vit_small_patch16_dinov3") == "timm"


def test_block_picks_an_earlier_block(recorded):
    last = TimmBackbone(model="vit_small_patch8_224.dino", weights=HERE / "dino_pretrain.pth",
                        model_kwargs={**TINY, "img_size": 32})
    first = TimmBackbone(model="vit_small_patch8_224.dino", weights=HERE / "dino_pretrain.pth", block=0,
                         model_kwargs={**TINY, "img_size": 32})
    x = the_input(recorded, "dino")
    assert last.block == 1 and first.block == 0
    assert not torch.allclose(tokens(first, x), tokens(last, x))
    assert (TimmBackbone(model="vit_small_patch8_224.dino", block=-1, model_kwargs={**TINY, "img_size": 32}).block
            == 1)
    with pytest.raises(ValueError, match="block=5"):
        TimmBackbone(model="vit_small_patch8_224.dino", block=5, model_kwargs={**TINY, "img_size": 32})


def test_wrong_files_and_keys_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(KeyError, match="checkpoint_key='teacherr'"):
        read_state_dict(HERE / "dino_checkpoint.pth", checkpoint_key="teacherr")
    with pytest.raises(ValueError, match="checkpoint_key"):
        read_state_dict(HERE / "dino_checkpoint.pth")  # a training checkpoint needs teacher/student
    with pytest.raises(ValueError, match="dinov2.pth: weights do not fit"):
        TimmBackbone(model="vit_small_patch8_224.dino", weights=HERE / "dinov2.pth",
                     model_kwargs={**TINY, "img_size": 32})
    # DINOv3's q/v biases would be dropped silently by the timm model without biases
    with pytest.raises(ValueError, match="_qkvb"):
        TimmBackbone(model="vit_small_patch16_dinov3", weights=HERE / "dinov3.pth",
                     model_kwargs={**TINY, "img_size": 32, "patch_size": 8})


def test_torchvision_resnet_reads_a_stage_and_loads_its_file(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    backbone = TorchvisionResNet(model="resnet18", weights=tmp_path / "r18.pth", block=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        assert torch.equal(backbone(x), expected)
    assert backbone(x).shape == (1, 256, 4, 6)
    with pytest.raises(ValueError, match="r18.pth: weights do not fit"):
        load_backbone_weights(torchvision.models.resnet34(weights=None), tmp_path / "r18.pth")


def test_feature_sources_through_build_feature_fn(tmp_path):
    """features=torchvision|timm on the command line: a frame in, a unit-norm D×h×w map out."""
    import torchvision

    from vidssl.eval.features import build_feature_fn

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    frame = torch.randint(0, 256, (40, 72, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resnet = build_feature_fn("torchvision", model="resnet18", weights=str(tmp_path / "r18.pth"), block=2)
    vit = build_feature_fn("timm", model="vit_small_patch8_224.dino", weights=str(HERE / "dino_pretrain.pth"),
                           resize="short", short_side=48, model_kwargs={**TINY, "img_size": 32})
    for fn, shape in ((resnet, (128, 5, 9)), (vit, (8, 6, 10))):
        out = fn(frame)
        assert out.shape == shape
        torch.testing.assert_close(out.norm(dim=0), torch.ones(shape[1:]))
