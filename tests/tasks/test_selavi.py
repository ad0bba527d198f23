"""SeLaVi task: shapes, gradients, Sinkhorn labels, label schedule, variants, state, DDP merge."""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidssl.tasks.selavi import FeatureBank, SeLaVi, benchmark_step, example_batch


class TinyVideo(nn.Module):
    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×3×T×H×W -> B×8×T'×H'×W'
        return F.relu(self.conv(x))


class TinyAudio(nn.Module):
    out_channels = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B×1×F×T -> B×6×F'×T'
        return F.relu(self.conv(x))


def make_task(**kw) -> SeLaVi:
    torch.manual_seed(0)
    args = dict(encoder=TinyVideo(), audio_encoder=TinyAudio(), num_clusters=(4, 3), hidden_dim=16,
                label_bank="queue", queue_size=32)
    args.update(kw)
    return SeLaVi(**args)


def batch(b: int = 8, start: int = 0, seed: int = 0, audio: bool = True) -> dict[str, torch.Tensor]:
    out = example_batch(batch_size=b, num_frames=4, size=16, n_mels=16, audio_frames=20, audio=audio, seed=seed)
    out["index"] = torch.arange(start, start + b)
    return out


def test_forward_keys_finite_and_gradients_reach_both_encoders() -> None:
    task = make_task()
    out = task(batch())
    assert set(out) == {"loss", "loss_video", "loss_audio", "entropy", "agreement", "labelled", "label_changes"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name in ("encoder", "audio_encoder", "projections", "heads"):
        grads = [p.grad for p in getattr(task, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert 0 <= float(out["entropy"]) <= 1
    # Same keys on the next call (the engine logs a fixed set).
    assert set(task(batch(seed=1))) == set(out)


def test_loss_is_cross_entropy_of_both_modalities_to_the_sinkhorn_codes() -> None:
    task = make_task(label_bank="none", align_modalities=False)
    b = batch()
    out = task(b)
    with torch.no_grad():
        logits = task.head_logits(task.embed(b))
        codes = task.assign(task.combined_scores(logits))
        expected = {s: sum(-(codes[h] * F.log_softmax(logits[s][h], 1)).sum(1).mean() for h in range(2)) / 2
                    for s in ("video", "audio")}
    assert float(out["loss_video"]) == pytest.approx(float(expected["video"]), rel=1e-5)
    assert float(out["loss_audio"]) == pytest.approx(float(expected["audio"]), rel=1e-5)
    assert out["loss"].item() == pytest.approx(float(expected["video"] + expected["audio"]) / 2, rel=1e-5)


def test_assignments_are_equipartitioned_and_follow_a_gaussian_marginal() -> None:
    torch.manual_seed(0)
    scores = [torch.randn(400, 4) * 0.5, torch.randn(400, 3) * 0.5]
    task = make_task(sinkhorn_iterations=100)
    for q, k in zip(task.assign(scores), (4, 3)):
        assert torch.allclose(q.sum(1), torch.ones(400), atol=1e-5)
        assert torch.allclose(q.sum(0), torch.full((k,), 400 / k), rtol=0.02)
    gauss = make_task(marginal="gaussian", marginal_std=0.3, sinkhorn_iterations=100)
    q = gauss.assign(scores)[0]
    wanted = gauss.marginal_0
    assert not torch.allclose(wanted, torch.full((4,), 0.25))
    # The drawn sizes are given to clusters in the order of their current mass.
    order = F.softmax(scores[0], 1).sum(0).argsort()
    assert torch.allclose(q.sum(0)[order] / 400, wanted.sort().values, rtol=0.03)


def test_hard_targets_are_one_hot() -> None:
    task = make_task(targets="hard", label_bank="none")
    codes = task._online_targets(task.combined_scores(task.head_logits(task.embed(batch()))))
    for q in codes:
        assert set(q.unique().tolist()) <= {0.0, 1.0} and torch.all(q.sum(1) == 1)


def test_label_schedule_warmup_then_every_n_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_task(label_bank="dataset", label_update_every=2, warmup_steps=3)
    calls: list[int] = []
    original = task.update_labels
    monkeypatch.setattr(task, "update_labels", lambda: (calls.append(task.step), original())[1])
    opt = torch.optim.SGD(task.parameters(), lr=0.1)
    for step in range(1, 9):
        out = task(batch(start=8 * ((step - 1) % 3)))  # 24 clips, seen in turn
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if step <= 3:
            assert float(out["labelled"]) == 0.0  # nothing stored before the first update
        task.on_train_step_end(step, 8)
        if step == 2:
            assert task.labels.shape[1] == 0
    assert calls == [3, 5, 7]
    assert task.labels.shape == (2, 24) and bool((task.labels >= 0).all())
    assert float(task(batch(start=8))["labelled"]) == 1.0
    # Every clip's labels are an equipartition-constrained assignment: no cluster empty, none has all.
    counts = torch.bincount(task.labels[0], minlength=4)
    assert counts.min() > 0 and counts.max() < 24


def test_stored_labels_are_the_targets() -> None:
    task = make_task(label_bank="dataset", label_update_every=1, align_modalities=False)
    b = batch()
    task(b)
    task.on_train_step_end(1, 10)
    out = task(b)
    emb = task.embed(b)
    logits = task.head_logits(emb)
    stored = task.labels[:, :8]
    expected = sum(F.cross_entropy(logits["video"][h], stored[h]) for h in range(2)) / 2
    assert float(out["loss_video"]) == pytest.approx(expected.item(), rel=1e-5)
    assert float(out["labelled"]) == 1.0


def test_single_modality_variant() -> None:
    task = make_task(audio_encoder=None)
    out = task(batch(audio=False))
    assert "loss_audio" not in out and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in task.encoder.parameters())
    embedding, scores = task.predict(batch(audio=False))
    assert embedding.shape == (8, 16) and [s.shape for s in scores] == [(8, 4), (8, 3)]


def test_concat_fusion() -> None:
    task = make_task(fusion="concat")
    out = task(batch())
    assert set(out) == {"loss", "entropy", "agreement", "labelled", "label_changes"}
    out["loss"].backward()
    assert all(p.grad is not None for p in task.audio_encoder.parameters())
    b = batch()
    b["has_audio"] = torch.tensor([True] * 7 + [False])
    with pytest.raises(ValueError, match="without audio"):
        task.predict(b)
    assert not task.can_label_video_only


def test_predict_scores_silent_clips_from_video_alone() -> None:
    task = make_task().eval()
    b = batch()
    b["has_audio"] = torch.tensor([True, False] * 4)
    _, scores = task.predict(b)
    logits = task.head_logits(task.embed(b))
    video_only = F.log_softmax(logits["video"][0], 1)
    both = F.log_softmax(task.combined_scores(logits)[0], 1)
    assert torch.allclose(scores[0][1::2], video_only[1::2], atol=1e-6)
    assert torch.allclose(scores[0][0::2], both[0::2], atol=1e-6)
    assert torch.allclose(scores[0].exp().sum(1), torch.ones(8), atol=1e-5)


def test_modality_alignment_undoes_a_permutation() -> None:
    task = make_task(hidden_dim=0, num_clusters=(5,), audio_encoder=TinyAudio())
    torch.manual_seed(1)
    # Both streams see the same features: give the audio head the video head's clusters, shuffled.
    task.heads["audio"][0] = nn.Linear(8, 5)
    video = task.heads["video"][0]
    with torch.no_grad():
        video.weight.mul_(20)  # confident heads, so the cost clearly prefers the right pairing
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        task.heads["audio"][0].weight.copy_(video.weight[perm])
        task.heads["audio"][0].bias.copy_(video.bias[perm])
    x = torch.randn(64, 8)
    task._align({"video": x, "audio": x})
    assert task.aligned
    assert torch.allclose(task.heads["audio"][0].weight, video.weight)
    assert torch.allclose(task.heads["audio"][0].bias, video.bias)


def test_feature_bank_queue_and_dataset_modes() -> None:
    queue = FeatureBank({"video": 2}, mode="queue", size=5)
    for start in (0, 3, 6):
        idx = torch.arange(start, start + 3)
        queue.push({"video": idx[:, None].float().repeat(1, 2)}, idx)
    feats, idx = queue.contents()
    assert sorted(idx.tolist()) == [4, 5, 6, 7, 8]  # the last five clips
    assert torch.equal(feats["video"][:, 0].long(), idx)
    whole = FeatureBank({"video": 2}, mode="dataset")
    whole.push({"video": torch.ones(2, 2)}, torch.tensor([7, 2]))
    whole.push({"video": torch.full((1, 2), 5.0)}, torch.tensor([7]))  # a clip seen again: replaced
    feats, idx = whole.contents()
    assert sorted(idx.tolist()) == [2, 7] and len(whole) == 2
    assert float(feats["video"][idx.tolist().index(7), 0]) == 5.0


def test_state_dict_round_trip_restores_labels_and_bank() -> None:
    task = make_task(label_bank="dataset", label_update_every=1)
    task(batch())
    task.on_train_step_end(1, 5)
    state = task.state_dict()
    fresh = make_task(label_bank="dataset", label_update_every=1)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.labels, task.labels) and fresh.step == 1 and fresh.aligned
    assert torch.equal(fresh.bank.contents()[1], task.bank.contents()[1])
    torch.manual_seed(3)
    a = task(batch(seed=3))
    torch.manual_seed(3)
    b = fresh(batch(seed=3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="label_bank"):
        make_task(label_bank="everything")
    with pytest.raises(ValueError, match="label_update_every"):
        make_task(label_bank="none", label_update_every=5)
    with pytest.raises(ValueError, match="num_clusters"):
        make_task(num_clusters=(1,))
    with pytest.raises(KeyError, match="audio"):
        make_task()(batch(audio=False))


def test_benchmark_step_times_a_step() -> None:
    result = benchmark_step(make_task(), batch(), steps=2, warmup=1)
    assert result["seconds_per_step"] > 0 and result["clips_per_second"] > 0 and result["batch_size"] == 8


# ---- DDP: two gloo processes relabel like one process on all their clips ------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bank_rows(rank: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    indices = torch.arange(rank * 20, rank * 20 + 20)
    return {"video": torch.randn(20, 16, generator=g), "audio": torch.randn(20, 16, generator=g)}, indices


def _ddp_worker(rank: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        task = make_task(label_bank="dataset", label_update_every=1, marginal="gaussian", marginal_std=0.3)
        feats, idx = _bank_rows(rank)
        task.bank.push(feats, idx)
        task.update_labels()
        torch.save({"labels": task.labels, "audio_w": task.heads["audio"][0].weight.detach()},
                   f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_update_matches_single_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "ranks")
    # spawn, not fork: forking a process whose thread pools are running can deadlock the children.
    mp.start_processes(_ddp_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    single = make_task(label_bank="dataset", label_update_every=1, marginal="gaussian", marginal_std=0.3)
    parts = [_bank_rows(r) for r in range(2)]
    single.bank.push({s: torch.cat([p[0][s] for p in parts]) for s in ("video", "audio")},
                     torch.cat([p[1] for p in parts]))
    single.update_labels()
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert torch.equal(got["labels"], single.labels)  # every rank holds every rank's labels
        assert torch.allclose(got["audio_w"], single.heads["audio"][0].weight)  # same alignment
