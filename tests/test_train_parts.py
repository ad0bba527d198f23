"""The parts the training loop is built from: the step, the train state, the checkpointer, and the
model-config check `tools/pretrain.py` runs before it builds anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vidssl.run import RunDir
from vidssl.train.checkpointer import Checkpointer
from vidssl.train.state import TrainState
from vidssl.train.step import TrainStep

REPO = Path(__file__).resolve().parents[1]


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 1)
        self.hook_calls: list[tuple[int, int]] = []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        error = self.encoder(batch["video"]).squeeze(1) - batch["target"]
        return {"loss": (error ** 2).mean(), "mean_error": error.mean()}

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        self.hook_calls.append((step, max_steps))


def batch(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return {"video": x, "target": x.sum(1), "path": [str(i) for i in range(n)]}


def test_train_step_accumulated_micro_batches_equal_one_batch_and_run_the_hook():
    torch.manual_seed(0)
    a, b = Regression(), Regression()
    b.load_state_dict(a.state_dict())
    whole = batch(8, seed=1)
    halves = [{k: v[:4] for k, v in whole.items()}, {k: v[4:] for k, v in whole.items()}]
    step_a = TrainStep(a, torch.optim.SGD(a.parameters(), lr=0.1), device=torch.device("cpu"), max_steps=10)
    step_b = TrainStep(b, torch.optim.SGD(b.parameters(), lr=0.1), device=torch.device("cpu"), max_steps=10)
    values_a, values_b = step_a(whole, 3), step_b(halves, 3)
    assert values_a.keys() == values_b.keys() == {"loss", "mean_error"}
    assert values_a["loss"] == pytest.approx(values_b["loss"], rel=1e-6)  # equal halves: the mean of means
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    assert a.hook_calls == b.hook_calls == [(3, 10)]
    assert all(p.grad is None for p in a.parameters())  # zeroed for the next step


def test_train_step_clips_and_reports_the_norm_and_refuses_a_non_finite_loss():
    torch.manual_seed(0)
    task = Regression()
    train_step = TrainStep(task, torch.optim.SGD(task.parameters(), lr=0.1), device=torch.device("cpu"),
                           grad_clip=1e-3, max_steps=5)
    before = [p.detach().clone() for p in task.parameters()]
    values = train_step(batch(4, seed=2), 1)
    assert values["grad_norm"] > 1e-3  # the norm before clipping
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(task.parameters(), before)]).norm()
    assert moved == pytest.approx(0.1 * 1e-3, rel=1e-2)  # lr × the clipped norm (float32 differences)
    bad = batch(4, seed=3)
    bad["target"][0] = float("nan")
    kept = [p.detach().clone() for p in task.parameters()]
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 2; the step was not applied"):
        train_step(bad, 2)
    assert all(torch.equal(p, k) for p, k in zip(task.parameters(), kept)) and task.hook_calls == [(1, 5)]


def test_train_state_round_trips_and_refuses_another_batch_size():
    import random

    state = TrainState(best_metric="loss", samples_per_batch=8)
    state.step, state.epoch, state.batch = 7, 2, 3
    state.observe_loss(2.0)
    state.observe_loss(1.0)
    lower, higher = (Checkpointer(RunDir("run"), 0, best_mode=mode) for mode in ("min", "max"))  # the best.pt rule
    assert state.smoothed_loss == pytest.approx(1.9) and lower.improves(5.0, state.best["value"])
    state.best["value"] = 1.5
    assert lower.improves(1.0, state.best["value"]) and not higher.improves(1.0, state.best["value"])
    saved = state.state_dict()
    assert saved["sampler"] == {"epoch": 2, "position": 24} and len(saved["rng"]) == 1
    expected = (torch.rand(2), random.random())

    restored = TrainState(best_metric="loss", samples_per_batch=8)
    restored.load_state_dict(saved)
    assert (restored.step, restored.epoch, restored.batch) == (7, 2, 3)
    assert restored.best == {"metric": "loss", "value": 1.5} and restored.smoothed_loss == pytest.approx(1.9)
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]  # the RNGs continue
    with pytest.raises(ValueError, match="24 samples into the epoch is not a whole number of batches of 16"):
        TrainState(best_metric="loss", samples_per_batch=16).load_state_dict(saved)


def test_checkpointer_writes_named_state_dicts_rotates_and_loads_the_last(tmp_path):
    checkpointer = Checkpointer(RunDir(tmp_path), keep_last=2)
    assert checkpointer.load() is None
    model = nn.Linear(2, 1)
    for step in (1, 2, 3):
        checkpointer.save({"model": model, "step": step, "config": {"a": 1}}, step=step, best=step == 2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step_0000002.pt", "step_0000003.pt"]  # no temporary file is left
    last = checkpointer.load()
    assert last.step == 3 and last.config == {"a": 1} and torch.equal(last.model["weight"], model.weight)
    assert torch.load(checkpointer.run_dir.best, weights_only=True)["step"] == 2
    Checkpointer(RunDir(tmp_path / "none"), keep_last=0).save({"step": 1}, step=1)
    assert sorted(p.name for p in (tmp_path / "none" / "checkpoints").iterdir()) == ["last.pt"]


def test_the_train_benchmark_times_the_trainers_step(monkeypatch):
    from vidssl.benchmarks.train import measure

    calls = []
    step = TrainStep.__call__
    monkeypatch.setattr(TrainStep, "__call__", lambda self, batches, n: calls.append(n) or step(self, batches, n))
    row = measure(name="simclr", task="simclr", overrides=["encoder.base_width=4"], batch_size=2, frames=0, size=0,
                  precision="fp32", steps=2, warmup=1, channels_last=False, device="cpu")
    assert calls == [1, 1, 1] and row["task"] == "simclr" and row["clips_per_s"] > 0


def test_no_run_to_resume_is_nothing_to_refuse(tmp_path):
    from vidssl.run import refuse_changed_model_config

    new_run = tmp_path / "new_run"
    assert refuse_changed_model_config(new_run, {"encoder": {"base_width": 8}}) is None
    assert not new_run.exists()  # checking creates nothing


def test_pretrain_refuses_another_model_config_before_building_anything(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"config": {"encoder": {"base_width": 999}}}, run / "checkpoints" / "last.pt")
    # The dataset root does not exist: had the dataset been built first, that would be the error.
    out = subprocess.run([sys.executable, str(REPO / "tools" / "pretrain.py"), "task=simclr", "dataset=synthetic",
                          "dataset.root=/nonexistent", f"trainer.out_dir={run}", "trainer.progress=false"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 1
    assert f"{run / 'checkpoints' / 'last.pt'} was trained with a different model config (" in out.stderr
    assert "encoder.base_width" in out.stderr
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "pretrain.log"]  # no config.yaml, no events
    assert "the run failed" in (run / "pretrain.log").read_text()
