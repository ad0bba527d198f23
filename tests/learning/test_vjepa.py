"""It really learns? V-JEPA pretrained briefly on the synthetic corpus, against its own random init.

A tiny RoPE video ViT (64 wide, 2 blocks, 4 heads; 8 frames at 64 px: a 4×4×4 token grid), predictor 32
wide × 1 block, the official masks, L1 loss, EMA 0.99 → 0.999, AdamW lr 1e-3 (warmup 10, cosine), batch 8,
STEPS steps through the engine, in this process. Then, on the val split (24 videos, centre clips), with
masks fixed for both models:

- the pretext loss of the trained task and of the task at the random init the run started from, and the
  target tokens' RankMe (so that a lower loss is not a collapse);
- the attentive probe (1 segment × 1 view, 2 lr × 1 wd, 10 epochs) on the target encoder's tokens, trained
  on the 56 train videos: accuracy of the trained and the random-init encoder (8 classes: chance 0.125).

Measured and asserted: see ``test_vjepa_learns`` (figures in docs/methods/vjepa.md).
"""

from __future__ import annotations

import copy

import pytest
import torch

from vidssl.datasets.dataset import VideoDataset
from vidssl.datasets.formats import synthetic
from vidssl.datasets.sampling import ClipSampler
from vidssl.datasets.transforms import ClipTransform, EvalTransform
from vidssl.encoders.vit_video import VideoViT
from vidssl.train import Trainer, seed_everything
from vidssl.eval.attentive_probe import attentive_probe
from vidssl.tasks.vjepa import VJEPA, rankme

STEPS = 80


def _task() -> VJEPA:
    encoder = VideoViT(embed_dim=64, depth=2, num_heads=4, img_size=64, num_frames=8, use_rope=True)
    return VJEPA(encoder=encoder, num_frames=8, img_size=64, predictor_dim=32, predictor_depth=1, predictor_heads=2,
                 ema=(0.99, 0.999))


def _clips(root, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = VideoDataset(root=root, entries=synthetic(root, split=split),
                        sampler=ClipSampler(num_frames=8, stride=2, random=False), transform=EvalTransform(size=64),
                        seed=0, substitute=False)
    samples = [data[i] for i in range(len(data))]
    return torch.stack([s["video"] for s in samples]), torch.tensor([s["label"] for s in samples])


@torch.no_grad()
def _pretext(task: VJEPA, video: torch.Tensor) -> tuple[float, float]:
    task.eval()
    g = torch.Generator().manual_seed(123)
    masks = [m(video.shape[0], counter=7, generator=g) for m in task.mask_generators]
    loss = float(task({"video": video, "masks": masks})["loss"])
    return loss, float(rankme(task.targets(video).flatten(0, 1)))


@torch.no_grad()
def _tokens(task: VJEPA, video: torch.Tensor) -> list[torch.Tensor]:
    return [torch.cat([task.target_encoder.eval().tokens(video[i:i + 8]) for i in range(0, len(video), 8)])]


@pytest.mark.slow
def test_vjepa_learns(synthetic_root, tmp_path):
    seed_everything(0)
    task = _task()
    initial = copy.deepcopy(task)
    train = VideoDataset(root=synthetic_root, entries=synthetic(synthetic_root, split="train"),
                         sampler=ClipSampler(num_frames=8, stride=2),
                         transform=ClipTransform(size=64, scale=(0.3, 1.0), ratio=(0.75, 1.35), color_jitter=0.0,
                                                 hue=0.0), seed=0)
    trainer = Trainer(max_steps=STEPS, batch_size=8, out_dir=tmp_path / "run", num_workers=1, warmup_steps=10,
                      progress=False, log_every=20, checkpoint_every=STEPS)
    trainer.fit(task, train, lambda groups: torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.04))

    val_video, val_labels = _clips(synthetic_root, "val")
    train_video, train_labels = _clips(synthetic_root, "train")
    trained_loss, trained_rank = _pretext(task, val_video)
    random_loss, random_rank = _pretext(initial, val_video)
    probe = {}
    for name, model in (("trained", task), ("random", initial)):
        probe[name] = attentive_probe((_tokens(model, train_video), train_labels),
                                      (_tokens(model, val_video), val_labels),
                                      num_classes=int(train_labels.max()) + 1, holdout=0.15, lrs=(5e-3, 1e-3),
                                      wds=(0.01,), epochs=10, batch_size=8, num_heads=4, depth=2)
    print(f"\nV-JEPA {STEPS} steps: val pretext loss trained {trained_loss:.4f} / random {random_loss:.4f}; target "
          f"RankMe trained {trained_rank:.1f} / random {random_rank:.1f} (of at most 64); attentive probe val-picked "
          f"{probe['trained']['val_picked_top1']:.1f} / {probe['random']['val_picked_top1']:.1f}, clean "
          f"{probe['trained']['clean_top1']:.1f} / {probe['random']['clean_top1']:.1f} (chance 12.5)")
    assert trained_loss < 0.95 * random_loss  # measured 0.896 (0.716 / 0.799); 120 steps: 0.84
    assert trained_rank > 4  # not collapsed
