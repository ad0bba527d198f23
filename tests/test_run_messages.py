"""What a run tells its user (start summary, end line, resume and schedule lines, scalar logs, errors),
and the training behaviour behind some of them: weight decay groups, the best metric, init_from."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vidssl.train.trainer import Trainer, param_groups
from vidssl.configs import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


class Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return {"video": x, "target": x.sum(), "index": i}


class Task(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
        self.head = nn.Linear(8, 1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": ((self.head(self.encoder(batch["video"])).squeeze(1) - batch["target"]) ** 2).mean()}


class OtherTask(Task):
    pass


def sgd(groups):
    return torch.optim.SGD(groups, lr=0.05, weight_decay=0.1)


def trainer(out_dir: Path, **kw) -> Trainer:
    args = dict(max_steps=4, batch_size=4, out_dir=out_dir, num_workers=0, checkpoint_every=2, log_every=2,
                progress=False)
    args.update(kw)
    return Trainer(**args)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_biases_and_norm_parameters_get_no_weight_decay_unless_asked():
    task = Task()
    groups = param_groups(task)
    assert [g.get("weight_decay") for g in groups] == [None, 0.0]  # None: the optimiser's own decay
    assert {id(p) for p in groups[0]["params"]} == {id(task.encoder[0].weight), id(task.head.weight)}
    assert len(groups[1]["params"]) == 4  # two biases, LayerNorm's weight and bias
    everything = param_groups(task, decay_norm_and_bias=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6
    # The optimiser really leaves them alone: with zero gradients only weight decay moves a parameter.
    opt = sgd(groups)
    for p in task.parameters():
        p.grad = torch.zeros_like(p)
    bias, weight = task.head.bias.detach().clone(), task.head.weight.detach().clone()
    opt.step()
    assert torch.equal(task.head.bias, bias) and not torch.equal(task.head.weight, weight)


def test_start_summary_end_line_and_scalar_logs(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    summary = trainer(tmp_path).fit(Task(), Data(), sgd)
    text = "\n".join(messages(caplog))
    assert "training Task: 65 parameters (65 trainable) on cpu, precision fp32" in text
    assert "data: 16 clips; batch 4 per process x 1 process(es) x 1 accumulated = 4 clips per step" in text
    assert "steps 0 -> 4" in text and "weight decay on weights only" in text
    assert f"checkpoints: {tmp_path / 'checkpoints'}" in text and "best.pt by the smoothed training loss" in text
    end = [m for m in messages(caplog) if m.startswith("finished at step 4 in ")]
    assert len(end) == 1 and f"last: {tmp_path / 'checkpoints' / 'last.pt'}" in end[0]
    assert f"best (loss {summary['best']['value']:.4g}): {tmp_path / 'checkpoints' / 'best.pt'}" in end[0]
    rows = list(csv.DictReader((tmp_path / "scalars.csv").open()))
    losses = [r for r in rows if r["name"] == "train/loss"]
    assert [int(r["step"]) for r in losses] == [2, 4]
    lines = (tmp_path / "scalars.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("step 4 ") and "train/lr " in lines[1]


def test_resume_line_once_schedule_change_and_already_finished(tmp_path, caplog):
    trainer(tmp_path).fit(Task(), Data(), sgd)
    caplog.set_level(logging.INFO)
    trainer(tmp_path, max_steps=6).fit(Task(), Data(), sgd)
    resumes = [m for m in messages(caplog) if m.startswith("resuming from")]
    assert len(resumes) == 1 and "at step 4" in resumes[0]
    changed = [m for m in messages(caplog) if "LR schedule changed" in m]
    assert len(changed) == 1 and "max_steps 4 -> 6" in changed[0] and "from step 4 on" in changed[0]
    caplog.clear()
    faster = lambda groups: torch.optim.SGD(groups, lr=0.5, weight_decay=0.1)  # noqa: E731
    assert trainer(tmp_path, max_steps=6).fit(Task(), Data(), faster)["step"] == 6
    kept = [m for m in messages(caplog) if "was trained at base LR 0.05, the optimiser config says 0.5" in m]
    assert len(kept) == 1 and "the checkpoint's is kept" in kept[0]
    assert "already finished at step 6: nothing to do (raise trainer.max_steps to continue)" in messages(caplog)
    assert not [m for m in messages(caplog) if "LR schedule changed" in m]  # the same schedule: no line


def test_best_checkpoint_follows_the_evaluators_metric(tmp_path, caplog):
    class Evaluator:
        best_metric, best_mode = "score", "max"

        def __init__(self) -> None:
            self.scores = iter([0.5, 0.9, 0.7, 0.8])

        def __call__(self, task, step, writer):
            return {"score": next(self.scores)}

    caplog.set_level(logging.INFO)
    run = trainer(tmp_path, evaluator=Evaluator(), eval_every=1, checkpoint_every=10)
    assert (run.best_metric, run.best_mode) == ("score", "max")
    never_evaluated = trainer(tmp_path, evaluator=Evaluator())  # eval_every=0: best.pt by the loss
    assert (never_evaluated.best_metric, never_evaluated.best_mode) == ("loss", "min")
    summary = run.fit(Task(), Data(), sgd)
    assert summary["best"] == {"metric": "score", "value": 0.9}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 2  # the step that scored 0.9
    assert "step 2 eval: score 0.9" in messages(caplog)
    assert any("best.pt by the evaluator's score, higher is better" in m for m in messages(caplog))
    rows = list(csv.DictReader((tmp_path / "scalars.csv").open()))
    assert [float(r["value"]) for r in rows if r["name"] == "eval/score"] == [0.5, 0.9, 0.7, 0.8]


def test_init_from_loads_model_or_encoder_and_names_keys_that_do_not_fit(tmp_path, caplog):
    source = Task()
    trainer(tmp_path / "source", max_steps=2).fit(source, Data(), sgd,
                                                  config={"task": {"model": {"_target_": "tests.Task"}}})
    ckpt = tmp_path / "source" / "checkpoints" / "last.pt"
    caplog.set_level(logging.INFO)

    task = Task()
    trainer(tmp_path / "model", max_steps=1, init_from=str(ckpt)).fit(task, Data(), sgd)
    assert any(m.startswith(f"initialised the model from {ckpt} (6 tensors)") for m in messages(caplog))
    caplog.clear()
    trainer(tmp_path / "model", max_steps=2, init_from=str(ckpt)).fit(Task(), Data(), sgd)  # resumes instead
    assert f"trainer.init_from={ckpt} is not used: the run resumes from its own last.pt" in messages(caplog)
    assert not any(m.startswith("initialised") for m in messages(caplog))

    class Wider(Task):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.extra = nn.Linear(2, 2)

        def forward(self, batch: dict) -> dict[str, torch.Tensor]:
            return {"loss": ((self.head(self.encoder(batch["video"])).sum(1) - batch["target"]) ** 2).mean()}

    with pytest.raises(RuntimeError) as info:
        trainer(tmp_path / "strict", init_from=str(ckpt)).fit(Wider(), Data(), sgd)
    message = str(info.value)
    assert "missing (2): extra.bias, extra.weight" in message
    assert "shape mismatch, checkpoint vs run (2): head.bias (1,) vs (2,), head.weight (1, 8) vs (2, 8)" in message
    assert not (tmp_path / "strict" / "checkpoints").exists()  # refused before any step

    encoder_only = Wider()
    before = encoder_only.head.weight.detach().clone()
    trainer(tmp_path / "encoder", max_steps=1, init_from=str(ckpt), init_part="encoder",
            warmup_steps=1).fit(encoder_only, Data(), lambda g: torch.optim.SGD(g, lr=0.0))
    assert torch.equal(encoder_only.encoder[0].weight, source.encoder[0].weight)
    assert torch.equal(encoder_only.head.weight, before)

    config = {"task": {"model": {"_target_": "tests.OtherTask"}}}
    with pytest.raises(ValueError, match="holds a tests.Task task, this run trains tests.OtherTask: use trainer.init_part"):
        trainer(tmp_path / "other", init_from=str(ckpt)).fit(OtherTask(), Data(), sgd, config=config)


def test_first_step_failure_names_the_task_and_the_encoder(tmp_path):
    class Mismatch(Task):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Conv3d(3, 8, 3)

    with pytest.raises(RuntimeError, match=r"first training step failed: task Mismatch with encoder Conv3d on a "
                                           r"batch of \{'video': \(4, 4\)"):
        trainer(tmp_path).fit(Mismatch(), Data(), sgd)


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "pretrain.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_a_missing_mandatory_key_is_one_line_before_hydra_starts():
    out = _pretrain("task=simclr", "dataset=synthetic", "dataset.root=/nonexistent")
    assert out.returncode == 1
    assert out.stderr.strip() == ("missing mandatory value: trainer.out_dir "
                                  "(set it on the command line, e.g. trainer.out_dir=...)")


@pytest.mark.slow
def test_pretrain_log_keeps_steps_with_the_progress_bar_and_the_error_of_a_failed_run(synthetic_root, tmp_path):
    run = tmp_path / "run"
    common = ["task=simclr", "dataset=synthetic", f"dataset.root={synthetic_root}", f"trainer.out_dir={run}",
              "encoder.base_width=8", "trainer.batch_size=2", "trainer.num_workers=0", "trainer.log_every=1"]
    ok = _pretrain(*common, "trainer.max_steps=2")
    assert ok.returncode == 0, ok.stderr[-3000:]
    log = (run / "pretrain.log").read_text()
    assert "training SimCLR" in log and "step 2/2 loss" in log and "finished at step 2" in log
    assert "step 2/2 loss" not in ok.stdout + ok.stderr  # on the console the bar shows it
    failed = _pretrain(*common, "trainer.max_steps=3", "encoder.base_width=16")  # another model: refused
    assert failed.returncode == 1
    log = (run / "pretrain.log").read_text()
    assert "the run failed" in log and "was trained with a different model config (encoder.base_width, " in log


@pytest.mark.parametrize("preset", ["dpc_paper", "memdpc_paper"])
def test_paper_presets_decay_every_parameter_as_the_official_code(preset):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"task={preset}", "trainer.out_dir=unused"])
    assert cfg.trainer.decay_norm_and_bias is True and cfg.optim.weight_decay == 1e-5
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        default = compose("pretrain", overrides=["task=dpc", "trainer.out_dir=unused"])
    assert default.trainer.decay_norm_and_bias is False
