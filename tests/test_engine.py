"""The training engine on toy tasks: schedule, sampler, checkpoints, accumulation, failures, signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from vidssl.run import Checkpoint
from vidssl.train.state import rng_state, set_rng_state
from toy_data import SeededSamples

from vidssl.train.trainer import Trainer, cosine_schedule, move_batch
from vidssl.run import model_config_changes, refuse_changed_model_config
from vidssl.train.batch_sampler import ResumableBatchSampler, epoch_permutation


class ToyDataset(SeededSamples):
    """Linear-regression samples whose noise is drawn from (epoch, index), like VideoDataset."""

    def __init__(self, n: int = 32, dim: int = 4) -> None:
        super().__init__(n)
        self.dim = dim
        self.w = torch.arange(1.0, dim + 1)

    def sample(self, i: int, g: torch.Generator) -> dict:
        x = torch.randn(self.dim, generator=g)
        return {"video": x, "target": x @ self.w + 0.01 * torch.randn((), generator=g), "index": i, "path": f"v{i}"}


class ToyTask(nn.Module):
    """Regression with a linear 'encoder'; `fail_at`/`signal_at` make a given forward call misbehave."""

    def __init__(self, dim: int = 4, fail_at: int | None = None, signal_at: int | None = None) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, 1)
        self.calls, self.fail_at, self.signal_at = 0, fail_at, signal_at
        self.hook_steps: list[int] = []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.calls += 1
        assert isinstance(batch["path"], list)  # non-tensor fields pass through the engine untouched
        loss = ((self.encoder(batch["video"]).squeeze(1) - batch["target"]) ** 2).mean()
        if self.calls == self.fail_at:
            loss = loss * float("nan")
        if self.calls == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": loss, "abs_bias": self.encoder.bias.detach().abs().squeeze()}

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        self.hook_steps.append(step)


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def make_trainer(out_dir: Path, **kw) -> Trainer:
    defaults = dict(max_steps=12, batch_size=4, out_dir=out_dir, num_workers=0, checkpoint_every=4, keep_last=2,
                    log_every=2, seed=0, progress=False)
    defaults.update(kw)
    return Trainer(**defaults)


def test_cosine_schedule_warms_up_then_decays_to_min_ratio():
    f = cosine_schedule(max_steps=10, warmup_steps=4, min_ratio=0.1)
    assert len(f) == 10
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_sampler_two_ranks_cover_the_single_process_batches():
    single = list(ResumableBatchSampler(size=21, batch_size=4, seed=3))
    ranks = [list(ResumableBatchSampler(size=21, batch_size=2, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == 5 == len(ranks[0]) == len(ranks[1])  # the incomplete last batch is dropped
    for k, batch in enumerate(single):
        assert batch == ranks[0][k] + ranks[1][k]
    assert sorted(sum(single, [])) == sorted(epoch_permutation(21, seed=3, epoch=0)[:20].tolist())


def test_sampler_resumes_mid_epoch_and_reshuffles_each_epoch():
    sampler = ResumableBatchSampler(size=16, batch_size=4, seed=0)
    sampler.set_state(1, 0)
    full = list(sampler)
    sampler.set_state(1, 3)
    assert list(sampler) == full[3:] and len(sampler) == 1
    sampler.set_state(2, 0)
    assert list(sampler) != full
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(size=3, batch_size=2, world_size=2)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]


def test_fit_learns_and_writes_rotating_plain_checkpoints(tmp_path):
    torch.manual_seed(0)
    task = ToyTask()
    trainer = make_trainer(tmp_path, max_steps=24, warmup_steps=2)
    summary = trainer.fit(task, ToyDataset(), sgd, config={"encoder": {"_target_": "torch.nn.Linear",
                                                                         "in_features": 4, "out_features": 1}})
    assert summary["step"] == 24 and not summary["interrupted"]
    assert summary["loss"] < 5.0  # starts around 30 (targets have variance 1+4+9+16)
    assert (task.encoder.weight.detach().cpu() - ToyDataset().w).abs().max() < 0.7  # moving to w = (1, 2, 3, 4)
    assert task.hook_steps == list(range(1, 25))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "last.pt", "step_0000020.pt", "step_0000024.pt"]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 24 and state["sampler"] == {"epoch": 2, "position": 32}  # 3 epochs of 8 batches
    assert torch.equal(state["encoder"]["weight"].cpu(), task.encoder.weight.detach().cpu())
    assert set(state) >= {"model", "encoder", "optimizer", "scheduler", "scaler", "step", "rng", "sampler", "config"}
    assert (tmp_path / "config.yaml").read_text().startswith("encoder:")
    assert list(tmp_path.glob("events.out.tfevents.*"))
    from vidssl.run import load_encoder

    encoder = load_encoder(tmp_path / "checkpoints" / "last.pt")
    assert torch.equal(encoder.weight, task.encoder.weight.detach().cpu())


def test_rerun_with_same_out_dir_resumes_and_a_finished_run_stays_finished(tmp_path):
    torch.manual_seed(0)
    make_trainer(tmp_path, max_steps=8).fit(ToyTask(), ToyDataset(), sgd)
    task = ToyTask()
    summary = make_trainer(tmp_path, max_steps=12).fit(task, ToyDataset(), sgd)
    assert summary["step"] == 12 and task.hook_steps == [9, 10, 11, 12]
    assert make_trainer(tmp_path, max_steps=12).fit(ToyTask(), ToyDataset(), sgd)["step"] == 12


def test_resuming_with_a_different_model_config_is_refused(tmp_path):
    config = {"encoder": {"_target_": "toy", "padding_mode": "zeros"}, "task": {"model": {"temperature": 0.1}},
              "trainer": {"max_steps": 4}}
    make_trainer(tmp_path, max_steps=4).fit(ToyTask(), ToyDataset(), sgd, config=config)
    # the same weights' shapes, another model: refused, naming what changed
    changed = {**config, "encoder": {"_target_": "toy", "padding_mode": "reflect"}}
    with pytest.raises(ValueError, match=r"different model config \(encoder.padding_mode\)"):
        refuse_changed_model_config(tmp_path, changed)
    # a longer run of the same model resumes
    longer = {**config, "trainer": {"max_steps": 8}}
    refuse_changed_model_config(tmp_path, longer)
    assert make_trainer(tmp_path, max_steps=8).fit(ToyTask(), ToyDataset(), sgd, config=longer)["step"] == 8


def test_model_config_changes_lists_dotted_keys():
    saved = {"encoder": {"a": 1, "b": {"c": 2}}, "task": {"model": {"t": 0.1}, "data": {"size": 64}},
             "dataset": {"root": "x"}}
    new = {"encoder": {"a": 1, "b": {"c": 3}, "d": 4}, "task": {"model": {"t": 0.2}, "data": {"size": 80}},
           "dataset": {"root": "y"}}
    # the data, its augmentation and the dataset may change between a run and its continuation
    assert model_config_changes(saved, new) == ["encoder.b.c", "encoder.d", "task.model.t"]
    assert model_config_changes(None, new) == [] and model_config_changes(saved, {"trainer": {}}) == []


def test_accumulation_matches_one_large_batch(tmp_path):
    torch.manual_seed(0)
    a, b = ToyTask(), ToyTask()
    b.load_state_dict(a.state_dict())
    make_trainer(tmp_path / "a", batch_size=8, accumulate=1, max_steps=6).fit(a, ToyDataset(), sgd)
    # The sampler cuts one permutation per epoch, so batches 2k and 2k+1 of 4 are batch k of 8.
    make_trainer(tmp_path / "b", batch_size=4, accumulate=2, max_steps=6).fit(b, ToyDataset(), sgd)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="at step 7"):
        make_trainer(tmp_path, max_steps=12, checkpoint_every=4).fit(ToyTask(fail_at=7), ToyDataset(), sgd)
    state = Checkpoint.load(tmp_path).to_dict()
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_sigterm_saves_stops_cleanly_and_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    previous = signal.getsignal(signal.SIGTERM)
    trainer = make_trainer(tmp_path, max_steps=10, checkpoint_every=50)
    summary = trainer.fit(ToyTask(signal_at=5), ToyDataset(), sgd)
    assert summary["interrupted"] and summary["step"] == 5 and summary["signal"] == signal.SIGTERM  # exit 143
    assert Checkpoint.load(tmp_path).to_dict()["sampler"] == {"epoch": 0, "position": 20}  # mid-epoch (8 batches)
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is uninstalled again

    resumed = ToyTask()  # its weights come from last.pt
    assert make_trainer(tmp_path, max_steps=10, checkpoint_every=50).fit(resumed, ToyDataset(), sgd)["step"] == 10
    torch.manual_seed(0)
    straight = ToyTask()
    make_trainer(tmp_path / "straight", max_steps=10, checkpoint_every=50).fit(straight, ToyDataset(), sgd)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_best_checkpoint_follows_the_evaluator_metric(tmp_path):
    torch.manual_seed(0)
    scores = iter([0.5, 0.9, 0.7])

    def evaluator(task, step, writer):
        assert not task.training
        return {"R@1": next(scores)}

    trainer = make_trainer(tmp_path, max_steps=6, eval_every=2, checkpoint_every=100, evaluator=evaluator,
                           best_metric="R@1", best_mode="max")
    trainer.fit(ToyTask(), ToyDataset(), sgd)
    best = Checkpoint.load(tmp_path / "checkpoints" / "best.pt").to_dict()
    assert best["step"] == 4 and best["best"] == {"metric": "R@1", "value": 0.9}


def test_bf16_autocast_and_grad_clip_run_on_cpu(tmp_path):
    torch.manual_seed(0)
    summary = make_trainer(tmp_path, precision="bf16", grad_clip=1.0, max_steps=4).fit(ToyTask(), ToyDataset(), sgd)
    assert summary["step"] == 4 and torch.isfinite(torch.tensor(summary["loss"]))


def test_move_batch_channels_last_and_passthrough():
    batch = {"video": torch.randn(2, 3, 4, 5, 6), "frames": torch.randn(2, 3, 5, 6), "index": torch.tensor([0, 1]),
             "path": ["a", "b"]}
    moved = move_batch(batch, torch.device("cpu"), channels_last=True)
    assert moved["video"].is_contiguous(memory_format=torch.channels_last_3d)
    assert moved["frames"].is_contiguous(memory_format=torch.channels_last)
    assert moved["path"] == ["a", "b"] and torch.equal(moved["index"], batch["index"])


def test_bad_arguments_fail_with_the_key_name(tmp_path):
    with pytest.raises(ValueError, match="trainer.precision"):
        make_trainer(tmp_path, precision="fp8")
    with pytest.raises(ValueError, match="trainer.max_steps"):
        make_trainer(tmp_path, max_steps=0)
    with pytest.raises(ValueError, match="needs an evaluator"):
        make_trainer(tmp_path, best_metric="R@1")


class ConvToy(nn.Module):
    """A 3-D conv 'encoder' on video, for the GPU-only paths (fp16 scaling, channels-last)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                                     nn.Linear(8, 1))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": ((self.encoder(batch["video"]).squeeze(1) - batch["target"]) ** 2).mean()}


class VideoToy(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        video = torch.randn(3, 4, 8, 8, generator=g)
        return {"video": video, "target": video.mean() * 10, "index": i, "path": str(i)}


def test_fp16_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        make_trainer(tmp_path, precision="fp16").fit(ConvToy(), VideoToy(), sgd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_autocast_channels_last_and_scaler_state(tmp_path, precision):
    torch.manual_seed(0)
    task = ConvToy()
    summary = make_trainer(tmp_path, precision=precision, channels_last=True, grad_clip=1.0, max_steps=6,
                           batch_size=4).fit(task, VideoToy(), sgd)
    assert summary["step"] == 6 and torch.isfinite(torch.tensor(summary["loss"]))
    assert next(task.parameters()).is_cuda
    assert task.encoder[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # the loss scale is saved for resume
    assert state["rng"][0]["cuda"]  # CUDA generator states are captured too


def test_train_benchmark_rows_for_an_encoder_and_a_task():
    from vidssl.benchmarks.train import run

    tiny = ["encoder.base_width=4"]
    rows = run(encoders=["r2d3d_18"], overrides=tiny, batch_size=2, frames=4, size=32, precisions=["fp32"])["rows"]
    assert [(r["encoder"], r["input"], r["precision"]) for r in rows] == [("r2d3d_18", "3x4x32x32", "fp32")]
    task_rows = run(task="simclr", overrides=tiny, batch_size=2, precisions=["bf16"])["rows"]
    assert [(r["task"], r["precision"]) for r in task_rows] == [("simclr", "bf16")]
    for row in rows + task_rows:
        assert row["clips_per_s"] > 0 and row["peak_mem_mb"] >= 0
    assert task_rows[0]["input"] == "3x8x64x64"  # the shape simclr's data config cuts
