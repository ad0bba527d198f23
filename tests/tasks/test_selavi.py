"""SeLaVi task: shapes, gradients, the scheduled relabelling pass, online codes, variants, state, DDP."""

from __future__ import annotations

import datetime
import functools
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vidssl.losses import sinkhorn_knopp, sinkhorn_to_tolerance
from vidssl.tasks.selavi import SeLaVi
from vidssl.tasks.selavi.labelling import relabel_steps
from vidssl.tasks.selavi.state import FeatureQueue, LabelTable


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
    args = dict(encoder=TinyVideo(), audio_encoder=TinyAudio(), num_clusters=(4, 3), head_hidden=16,
                num_relabels=3, relabel_batch_size=8, bn_warmup_batches=2)
    args.update(kw)
    if args.get("labels") == "online":
        for key in ("num_relabels", "relabel_batch_size", "bn_warmup_batches"):
            args.pop(key)
    return SeLaVi(**args)


def clips(n: int = 24, seed: int = 0, audio: bool = True) -> list[dict]:
    """A small in-memory dataset of sample dicts, as VideoDataset returns them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        sample = {"video": torch.randn(3, 4, 16, 16, generator=g), "index": i}
        if audio:
            sample["audio"] = torch.randn(1, 16, 20, generator=g)
        out.append(sample)
    return out


def loader_of(dataset: list[dict], batch_size: int = 8):
    """The engine's ``make_loader`` for an in-memory dataset."""
    return functools.partial(DataLoader, dataset, batch_size=batch_size)


def batch(dataset: list[dict], start: int = 0, size: int = 8) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(dataset[start:start + size], batch_size=size)))


def test_relabelling_labels_every_clip_from_an_eval_pass_to_convergence() -> None:
    data = clips()
    task = make_task(align_modalities=False)
    task.on_train_step_start(0, 30, loader_of(data))
    assert task.relabels_done == 1 and task.training  # the mode is restored
    labels = task.table.labels
    assert labels.shape == (2, 24) and bool((labels >= 0).all())

    # The same labels by hand: eval-mode features of all clips, fp64 scores, Sinkhorn to tolerance 0.1.
    task.eval()
    with torch.no_grad():
        logits = task.head_logits(task.embed(batch(data, 0, 24)))
    for h in range(2):
        scores = 0.5 * (F.log_softmax(logits["video"][h].double(), 1) + F.log_softmax(logits["audio"][h].double(), 1))
        codes, iterations = sinkhorn_to_tolerance(scores, 0.05, tolerance=0.1, max_iterations=2000)
        assert torch.equal(codes.argmax(1), labels[h])
    assert iterations % 10 == 1  # the official check points: 1, 11, 21, ...


def test_loss_is_cross_entropy_of_both_modalities_to_the_stored_labels() -> None:
    data = clips()
    task = make_task()
    task.on_train_step_start(0, 30, loader_of(data))
    b = batch(data, 8)
    task.eval()  # no dropout, so that the loss can be recomputed
    out = task(b)
    assert set(out) == {"loss", "loss_video", "loss_audio", "entropy", "agreement", "label_changes",
                        "sinkhorn_iterations", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "cluster_min", "cluster_max", "cluster_entropy"}
    with torch.no_grad():
        logits = task.head_logits(task.embed(b))
    stored = task.table.labels[:, 8:16]
    expected = {s: sum(F.cross_entropy(logits[s][h], stored[h]) for h in range(2)) / 2 for s in ("video", "audio")}
    assert float(out["loss_video"]) == pytest.approx(float(expected["video"]), rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(expected["video"] + expected["audio"]) / 2, rel=1e-5)
    task.train()
    out = task(b)
    out["loss"].backward()
    for name in ("encoder", "audio_encoder", "heads"):
        assert all(p.grad is not None for p in getattr(task, name).parameters()), name


def test_training_without_labels_is_a_clear_error() -> None:
    task = make_task()
    with pytest.raises(RuntimeError, match="no pseudo-label"):
        task(batch(clips()))


def test_schedule_relabels_at_the_power_schedule_first_at_step_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    assert relabel_steps(100, 4) == [0.0, 100 * 0.25**1.5, 100 * 0.5**1.5, 100 * 0.75**1.5]
    # SeLaVi's own schedule: epochs·N_dl·linspace(0, 1, nopts)^1.5 without its never-reached last point.
    official = (1000 * torch.linspace(0, 1, 100, dtype=torch.float64) ** 1.5)[:-1]
    assert torch.allclose(torch.tensor(relabel_steps(1000, 99), dtype=torch.float64), official)

    data = clips()
    task = make_task(num_relabels=4)
    calls, warmups = [], []
    monkeypatch.setattr(task, "relabel", lambda make_loader: calls.append(step))
    import vidssl.tasks.selavi.model as model

    monkeypatch.setattr(model, "warm_up_batchnorm", lambda *a, **k: warmups.append(step))
    for step in range(20):  # points 0, 2.5, 7.07, 12.99: one relabelling before the first step at or after each
        task.on_train_step_start(step, 20, loader_of(data))
    assert calls == [0, 3, 8, 13] and warmups == [0] and task.relabels_done == 4


def test_batchnorm_warmup_runs_train_mode_batches_before_the_first_relabelling() -> None:
    data = clips()
    task = make_task(bn_warmup_batches=2)
    bn = task.heads["video"][0][2]
    assert torch.equal(bn.running_mean, torch.zeros(16))
    task.on_train_step_start(0, 30, loader_of(data))
    assert int(bn.num_batches_tracked) == 2 and not torch.equal(bn.running_mean, torch.zeros(16))


def test_first_relabelling_aligns_the_audio_heads_once() -> None:
    data = clips()
    task = make_task(num_clusters=(5,))
    video, audio = task.heads["video"][0][-1], task.heads["audio"][0][-1]
    before = audio.weight.detach().clone()
    task.on_train_step_start(0, 30, loader_of(data))
    assert task.aligned
    rows = [int((before == row).all(1).nonzero()) for row in audio.weight.detach()]
    assert sorted(rows) == list(range(5))  # the rows were permuted, not changed
    after_first = audio.weight.detach().clone()
    task.relabel(loader_of(data))
    assert torch.equal(audio.weight, after_first)
    assert video.weight.shape == (5, 16)


def test_modality_alignment_undoes_a_permutation() -> None:
    task = make_task(num_clusters=(5,), head_hidden=0)
    video, audio = task.heads["video"][0][-1], task.heads["audio"][0][-1]
    task.heads["audio"][0][-1] = audio = nn.Linear(8, 5)
    with torch.no_grad():
        video.weight.mul_(20)  # confident heads, so the cost clearly prefers the right pairing
        perm = torch.tensor([3, 0, 4, 1, 2])
        audio.weight.copy_(video.weight[perm])
        audio.bias.copy_(video.bias[perm])
    x = torch.randn(64, 8)
    task._align({"video": x, "audio": x})
    assert torch.allclose(audio.weight, video.weight) and torch.allclose(audio.bias, video.bias)


def test_heads_are_the_official_mlp() -> None:
    task = make_task(head_hidden=512)
    head = task.heads["audio"][1]
    kinds = [type(m) for m in head]
    assert kinds == [nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[1].bias is None and head[1].out_features == 512 and head[0].p == 0.3 and head[4].p == 0.3
    assert head[5].out_features == 3 and head[1].in_features == 6


def test_assignments_are_equipartitioned_and_follow_a_gaussian_marginal() -> None:
    torch.manual_seed(0)
    scores = [torch.randn(400, 4) * 0.5, torch.randn(400, 3) * 0.5]
    task = make_task()
    for q, k in zip(task.assign(scores, tolerance=1e-6), (4, 3)):
        assert torch.allclose(q.sum(1), torch.ones(400), atol=1e-5)
        assert torch.allclose(q.sum(0), torch.full((k,), 400 / k), rtol=1e-3)
    gauss = make_task(marginal="gaussian", marginal_std=0.3)
    q = gauss.assign(scores, tolerance=1e-6)[0]
    wanted = gauss.marginals[0]
    assert not torch.allclose(wanted, torch.full((4,), 0.25, dtype=torch.float64))
    # The drawn sizes are given to clusters in the order of their current mass.
    order = F.softmax(scores[0], 1).sum(0).argsort()
    assert torch.allclose(q.sum(0)[order].double() / 400, wanted.sort().values, rtol=1e-3)


def test_online_codes_each_step() -> None:
    data = clips()
    task = make_task(labels="online", align_modalities=False)
    b = batch(data)
    out = task(b)
    assert set(out) == {"loss", "loss_video", "loss_audio", "entropy", "agreement", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "cluster_min", "cluster_max", "cluster_entropy"}
    # soft codes of 3 Sinkhorn iterations on the batch; recomputed in eval mode (no dropout)
    task.eval()
    out = task(b)
    with torch.no_grad():
        logits = task.head_logits(task.embed(b))
    codes = [sinkhorn_knopp(s, 0.05, 3) for s in task.combined_scores(logits)]
    expected = sum(-(codes[h] * F.log_softmax(logits["video"][h], 1)).sum(1).mean() for h in range(2)) / 2
    assert float(out["loss_video"]) == pytest.approx(float(expected), rel=1e-5)

    hard = make_task(labels="online", targets="hard", queue_size=16, align_modalities=False)
    hard(b)
    assert len(hard.queue) == 8
    codes = hard._online_targets(hard.embed(b), hard.head_logits(hard.embed(b)))
    for q in codes:
        assert set(q.unique().tolist()) <= {0.0, 1.0} and torch.all(q.sum(1) == 1)


def test_feature_queue_keeps_the_last_clips() -> None:
    queue = FeatureQueue({"video": 2}, size=5)
    for start in (0, 3, 6):
        queue.push({"video": torch.arange(start, start + 3)[:, None].float().repeat(1, 2)})
    assert sorted(queue.contents()["video"][:, 0].long().tolist()) == [4, 5, 6, 7, 8]


def test_feature_queue_places_rows_as_moco_queue_does() -> None:
    # one ring-buffer write for both queues: the same slots as writing one row at a time, batch > size included
    from vidssl.losses import MoCoQueue

    queue, moco = FeatureQueue({"video": 2}, size=5), MoCoQueue(dim=2, size=5)
    reference, pointer = torch.zeros(5, 2), 0
    for batch in (2, 4, 7, 1, 5):
        rows = torch.randn(batch, 2)
        queue.push({"video": rows})
        moco.enqueue(rows)
        for row in rows:
            reference[pointer], pointer = row, (pointer + 1) % 5
        assert torch.equal(queue.contents()["video"], reference[: len(queue)])
        assert torch.equal(moco.negatives(), reference) or len(queue) < 5
        assert queue.pointer == int(moco.ptr) == pointer


def test_label_table_lookup_and_changes() -> None:
    table = LabelTable(1)
    assert table.update(torch.tensor([0, 2]), torch.tensor([[1, 3]])) == 0.0
    assert table.lookup(torch.tensor([0, 1, 2, 5])).tolist() == [[1, -1, 3, -1]]
    assert table.update(torch.tensor([0, 2]), torch.tensor([[1, 0]])) == 0.5


def test_single_modality_variant() -> None:
    data = clips(audio=False)
    task = make_task(audio_encoder=None)
    task.on_train_step_start(0, 30, loader_of(data))
    out = task(batch(data))
    assert "loss_audio" not in out and "agreement" not in out and torch.isfinite(out["loss"])
    embedding, scores = task.predict(batch(data))
    assert embedding.shape == (8, 8) and [s.shape for s in scores] == [(8, 4), (8, 3)]


def test_concat_fusion() -> None:
    data = clips()
    task = make_task(fusion="concat", align_modalities=False)
    task.on_train_step_start(0, 30, loader_of(data))
    out = task(batch(data))
    assert set(out) == {"loss", "entropy", "label_changes", "sinkhorn_iterations", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "cluster_min", "cluster_max", "cluster_entropy"}
    b = batch(data)
    b["has_audio"] = torch.tensor([True] * 7 + [False])
    with pytest.raises(ValueError, match="without audio"):
        task.predict(b)
    assert not task.can_label_video_only


def test_predict_scores_silent_clips_from_video_alone() -> None:
    task = make_task().eval()
    b = batch(clips())
    b["has_audio"] = torch.tensor([True, False] * 4)
    _, scores = task.predict(b)
    logits = task.head_logits(task.embed(b))
    video_only = F.log_softmax(logits["video"][0], 1)
    both = F.log_softmax(task.combined_scores(logits)[0], 1)
    assert torch.allclose(scores[0][1::2], video_only[1::2], atol=1e-6)
    assert torch.allclose(scores[0][0::2], both[0::2], atol=1e-6)


def test_state_dict_round_trip_restores_labels_and_schedule() -> None:
    data = clips()
    task = make_task()
    task.on_train_step_start(0, 30, loader_of(data))
    task.on_train_step_end(1, 30)
    fresh = make_task()
    fresh.load_state_dict(task.state_dict())
    assert torch.equal(fresh.table.labels, task.table.labels)
    assert (fresh.relabels_done, fresh.step, fresh.aligned) == (1, 1, True)
    task.eval(), fresh.eval()
    a, b = task(batch(data)), fresh(batch(data))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_contradictory_options_are_named() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        make_task(queue_size=64)  # a queue has no use when labels come from a pass over the dataset
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        make_task(sinkhorn_iterations=3)
    with pytest.raises(ValueError, match="num_relabels"):
        SeLaVi(encoder=TinyVideo(), audio_encoder=TinyAudio(), labels="online", num_relabels=5)
    with pytest.raises(ValueError, match="align_modalities"):
        make_task(audio_encoder=None, align_modalities=True)
    with pytest.raises(ValueError, match="align_modalities"):
        make_task(fusion="concat", align_modalities=True)
    # unset: aligned exactly when there are audio heads
    assert make_task().align_modalities and not make_task(audio_encoder=None).align_modalities
    assert not make_task(fusion="concat").align_modalities
    with pytest.raises(ValueError, match="marginal_std"):
        make_task(marginal_std=0.2)  # the uniform marginal has no spread
    with pytest.raises(ValueError, match="labels"):
        make_task(labels="sometimes")
    with pytest.raises(ValueError, match="num_clusters"):
        make_task(num_clusters=(1,))
    with pytest.raises(KeyError, match="audio"):
        make_task().eval()(batch(clips(audio=False)))


# ---- DDP: two gloo processes relabel like one process on all the clips --------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        task = make_task(marginal="gaussian", marginal_std=0.3)
        task.relabel(loader_of(clips(25)))  # 25 clips: shards of 13 and 12
        torch.save({"labels": task.table.labels, "audio_w": task.heads["audio"][0][-1].weight.detach()},
                   f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_relabelling_matches_single_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "ranks")
    # spawn, not fork: forking a process whose thread pools are running can deadlock the children.
    mp.start_processes(_ddp_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="spawn")
    single = make_task(marginal="gaussian", marginal_std=0.3)
    single.relabel(loader_of(clips(25)))
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert torch.equal(got["labels"], single.table.labels)  # every rank holds every rank's labels
        assert torch.allclose(got["audio_w"], single.heads["audio"][0][-1].weight)  # same alignment


def test_the_engine_drives_the_relabelling_schedule(tmp_path) -> None:
    """Trainer.fit calls on_train_step_start with a loader over the training dataset: the first
    relabelling runs before step 1, the others on schedule, and a resumed run continues the schedule."""
    from vidssl.train.trainer import Trainer

    data = clips(16)
    task = make_task(num_relabels=3, align_modalities=False)
    trainer = Trainer(max_steps=6, batch_size=8, out_dir=tmp_path, num_workers=0, progress=False, device="cpu",
                      checkpoint_every=3)
    trainer.fit(task, data, functools.partial(torch.optim.SGD, lr=0.01))
    assert task.relabels_done == 3  # at steps 0, 1.9 -> 2, 3.8 -> 4 of 6
    assert task.table.labels.shape == (2, 16) and bool((task.table.labels >= 0).all())
    resumed = make_task(num_relabels=3, align_modalities=False)
    Trainer(max_steps=6, batch_size=8, out_dir=tmp_path, num_workers=0, progress=False, device="cpu").fit(
        resumed, data, functools.partial(torch.optim.SGD, lr=0.01))
    assert resumed.relabels_done == 3 and torch.equal(resumed.table.labels, task.table.labels)
