"""SimCLR and MoCo tasks on a tiny 3-D conv encoder: finite loss, gradients, queue and momentum."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidssl.tasks.moco import MoCo
from vidssl.tasks.simclr import SimCLR, pair_accuracy


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(8)
        self.out_channels = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×3×T×H×W → B×8×T×H×W
        return torch.relu(self.norm(self.conv(x)))


def tiny_head(*, in_dim: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, 16), nn.ReLU(), nn.Linear(16, out_dim))


def two_views(b: int = 4) -> dict:
    return {"video": torch.randn(b, 3, 4, 8, 8), "video2": torch.randn(b, 3, 4, 8, 8), "path": ["p"] * b}


def test_pair_accuracy_against_a_loop():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    hits = 0
    for i in range(10):
        best = max((j for j in range(10) if j != i), key=lambda j: float(z[i] @ z[j]))
        hits += best == (i + 5) % 10
    assert pair_accuracy(z1, z2).item() == pytest.approx(hits / 10)
    assert pair_accuracy(z1, z1 * 2).item() == 1.0  # identical directions: every partner is found


def test_simclr_loss_is_finite_and_gradients_reach_encoder_and_head():
    torch.manual_seed(0)
    task = SimCLR(encoder=TinyEncoder(), head=tiny_head, embed_dim=6, temperature=0.2)
    out = task(two_views())
    assert set(out) == {"loss", "accuracy", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "similarity_gap"}
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in task.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_simclr_loss_is_lower_for_matching_views():
    torch.manual_seed(0)
    task = SimCLR(encoder=TinyEncoder(), head=tiny_head, embed_dim=6).eval()
    batch = two_views(6)
    same = task({"video": batch["video"], "video2": batch["video"]})["loss"]
    different = task(batch)["loss"]
    assert same < different


def test_moco_gradients_skip_the_key_branch_and_the_queue_fills():
    torch.manual_seed(0)
    task = MoCo(encoder=TinyEncoder(), head=tiny_head, embed_dim=6, queue_size=10, temperature=0.2, momentum=0.9)
    before = task.queue.queue.clone()
    out = task(two_views(4))
    assert set(out) == {"loss", "accuracy", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "similarity_gap"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in [*task.encoder.parameters(), *task.head.parameters()])
    assert all(p.grad is None and not p.requires_grad for p in [*task.key_encoder.parameters(),
                                                                *task.key_head.parameters()])
    # The 4 keys went into slots 0..3, unit length; the rest of the queue is untouched.
    assert int(task.queue.ptr) == 4
    assert torch.allclose(task.queue.queue[:4].norm(dim=1), torch.ones(4))
    assert torch.equal(task.queue.queue[4:], before[4:]) and not torch.equal(task.queue.queue[:4], before[:4])
    task.eval()
    task(two_views(4))
    assert int(task.queue.ptr) == 4  # evaluation does not enqueue


def test_moco_momentum_update_is_an_ema_of_the_query_branch():
    torch.manual_seed(0)
    task = MoCo(encoder=TinyEncoder(), head=tiny_head, embed_dim=6, queue_size=8, momentum=0.75)
    for a, b in zip(task.encoder.parameters(), task.key_encoder.parameters()):
        assert torch.equal(a, b)  # the key branch starts as a copy
    with torch.no_grad():
        for p in task.encoder.parameters():
            p.add_(1.0)
    key_before = [p.clone() for p in task.key_encoder.parameters()]
    task.on_train_step_end(1, 10)
    for q, k, k0 in zip(task.encoder.parameters(), task.key_encoder.parameters(), key_before):
        torch.testing.assert_close(k, 0.75 * k0 + 0.25 * q)


def test_moco_trains_under_the_engine(tmp_path):
    from vidssl.train.trainer import Trainer

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            clip = torch.randn(3, 4, 8, 8, generator=g)
            return {"video": clip + 0.1 * torch.randn(clip.shape, generator=g), "video2": clip, "index": i,
                    "path": str(i)}

    torch.manual_seed(0)
    task = MoCo(encoder=TinyEncoder(), head=tiny_head, embed_dim=6, queue_size=8, momentum=0.9)
    key_before = [p.clone() for p in task.key_encoder.parameters()]
    trainer = Trainer(max_steps=3, batch_size=4, out_dir=tmp_path, num_workers=0, checkpoint_every=3,
                      progress=False)
    summary = trainer.fit(task, Views(), lambda p: torch.optim.SGD(p, lr=0.1))
    assert summary["step"] == 3
    assert int(task.queue.ptr) == (3 * 4) % 8  # three batches of 4 keys went through a queue of 8
    assert any(not torch.equal(a, b.cpu()) for a, b in zip(key_before, task.key_encoder.parameters()))
