"""timm backbones as clip encoders: clustering (pseudo_label method=kmeans|sinkhorn) and retrieval/linear, at random init."""

from __future__ import annotations


import pytest
import torch
from hydra.utils import instantiate

from vidssl.run import load_encoder
from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.formats import synthetic
from vidssl.datasets.sampling import ClipSampler
from vidssl.datasets.transforms import EvalTransform
from vidssl.encoders import pool
from vidssl.encoders.backbones import ClipBackbone, timm_clip_encoder
from vidssl.eval.retrieval import evaluate_checkpoint
from vidssl.eval.pseudo_label import cluster_features, encoder_features
from vidssl.configs import CONFIG_DIR

CONFIGS = CONFIG_DIR / "encoder"
TINY = {"model": "vit_small_patch16_224.dino", "model_kwargs": {"embed_dim": 8, "depth": 1, "num_heads": 2,
                                                                 "img_size": 32}}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from vidssl.datasets.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("clips"), num_videos=8, num_classes=2, height=32, width=32,
                          min_frames=8, max_frames=8, davis_train_per_class=0, val_fraction=0.5)


def test_clip_backbone_pools_frame_features_over_the_clip():
    encoder = timm_clip_encoder(**TINY).eval()
    clip = torch.randn(2, 3, 4, 32, 48)
    out = encoder(clip)
    assert out.shape == (2, 8, 4, 2, 3) and encoder.out_channels == 8
    with torch.no_grad():
        frame = encoder.backbone(clip[:, :, 2])  # one frame alone gives that frame's slice
        frames = encoder.backbone(clip.transpose(1, 2).flatten(0, 1)).reshape(2, 4, 8, -1)  # (B, T, D, h·w)
    torch.testing.assert_close(out[:, :, 2], frame)
    torch.testing.assert_close(pool(out), frames.mean(dim=(1, 3)))


def test_encoder_config_builds_through_load_encoder():
    cfg = {"_target_": "vidssl.encoders.backbones.timm_clip_encoder", **TINY}
    encoder = load_encoder("random", cfg)  # checkpoint=random encoder=timm …: what the tools call
    assert isinstance(encoder, ClipBackbone)
    assert (CONFIGS / "timm.yaml").is_file() and (CONFIGS / "torchvision_resnet.yaml").is_file()


def test_clustering_retrieval_and_linear_with_a_timm_backbone(tiny_corpus):
    encoder = instantiate({"_target_": "vidssl.encoders.backbones.timm_clip_encoder", **TINY})

    def dataset(split):
        return VideoDataset(root=tiny_corpus, entries=synthetic(tiny_corpus, split=split),
                            sampler=ClipSampler(num_frames=2, stride=2, random=False),
                            transform=EvalTransform(size=32), substitute=False)

    paths, features, skipped = encoder_features(encoder, dataset("train"), batch_size=4)
    assert features.shape == (len(paths), 8) and not skipped
    assert torch.allclose(features.norm(dim=1), torch.ones(len(paths)), atol=1e-5)
    for method in ("kmeans", "sinkhorn"):
        labelling = cluster_features(paths, features, method=method, num_clusters=2, seed=0)
        assert set(labelling.clusters[0].tolist()) <= {0, 1} and len(labelling.paths) == len(paths)
    for metric in ("retrieval", "linear"):
        scores = evaluate_checkpoint(metric=metric, encoder=encoder, train_set=dataset("train"),
                                     test_set=dataset("val"), batch_size=4, ks=(1,), epochs=5)
        key = "R@1" if metric == "retrieval" else "top1"
        assert 0 <= scores[key] <= 1 and scores["test_used"] == len(synthetic(tiny_corpus, split="val"))
