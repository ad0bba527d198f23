"""Exact resume: a run SIGKILLed mid-epoch and rerun on the same out_dir ends bit-identical to an
uninterrupted one; and `tools/pretrain.py task=simclr` runs and resumes end to end on the synthetic corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# A toy run that still has every source of state exact resume must restore: per-sample randomness from
# (epoch, index), dropout from the global RNG, AdamW moments, a warmup+cosine LR, several epochs, and
# loader workers. With KILL_AT > 0 the process SIGKILLs itself inside that forward call: no handler runs.
TOY_RUN = r'''
import json, os, signal, sys
import torch
from torch import nn
from vidssl.train.trainer import Trainer, seed_everything

out_dir, num_workers, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Noisy(torch.utils.data.Dataset):
    epoch = 0
    def __len__(self):
        return 22  # 5 batches of 4 per epoch; the last 2 samples are dropped
    def set_epoch(self, epoch):
        self.epoch = epoch
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(7919 * self.epoch + i)
        x = torch.randn(6, generator=g)
        return {"video": x + 0.1 * torch.randn(6, generator=g), "target": x.sum().sin(), "index": i, "path": str(i)}

class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.calls = 0
    def forward(self, batch):
        self.calls += 1
        if self.calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        loss = ((self.encoder(batch["video"]).squeeze(1) - batch["target"]) ** 2).mean()
        return {"loss": loss}

seed_everything(0)
task = Toy()
trainer = Trainer(max_steps=23, batch_size=4, out_dir=out_dir, num_workers=num_workers, checkpoint_every=4,
                  keep_last=2, log_every=5, seed=0, warmup_steps=4, progress=False)
summary = trainer.fit(task, Noisy(), lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.05))
torch.save(task.state_dict(), os.path.join(out_dir, "final.pt"))
print(json.dumps({"calls": task.calls, "step": summary["step"]}))
'''


def _toy(out_dir: Path, num_workers: int, kill_at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TOY_RUN, str(out_dir), str(num_workers), str(kill_at)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_sigkilled_run_resumes_bit_identical(tmp_path):
    straight = _toy(tmp_path / "straight", num_workers=0)
    assert straight.returncode == 0, straight.stderr

    # Killed in step 14 (epoch 2, its 4th batch): the checkpoint of step 12 (2 batches into epoch 2) is on disk.
    killed = _toy(tmp_path / "resumed", num_workers=2, kill_at=14)
    assert killed.returncode == -signal.SIGKILL
    last = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 12 and last["sampler"] == {"epoch": 2, "position": 8}
    assert not (tmp_path / "resumed" / "final.pt").exists()

    # The same command again; different worker count on purpose: samples do not depend on workers.
    resumed = _toy(tmp_path / "resumed", num_workers=1)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {"calls": 11, "step": 23}  # steps 13..23 only

    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # And the checkpoints themselves agree (optimiser moments included).
    ca = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    cb = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    for pid, s in ca["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg"], cb["optimizer"]["state"][pid]["exp_avg"])


def _pretrain(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "tools" / "pretrain.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.mark.slow
def test_pretrain_simclr_end_to_end_and_resume(synthetic_root, tmp_path):
    run = tmp_path / "run"
    common = ["task=simclr", "dataset=synthetic", f"dataset.root={synthetic_root}", f"trainer.out_dir={run}",
              "encoder.base_width=16", "trainer.batch_size=4", "trainer.num_workers=1", "trainer.checkpoint_every=2",
              "trainer.progress=false"]
    first = _pretrain(*common, "trainer.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["task"]["model"]["_target_"] == "vidssl.tasks.simclr.SimCLR"
    assert (run / "config.yaml").exists()
    second = _pretrain(*common, "trainer.max_steps=3")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr + second.stdout
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3

    from vidssl.run import load_encoder

    encoder = load_encoder(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(p).all() for p in encoder.parameters())
