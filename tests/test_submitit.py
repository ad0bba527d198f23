"""SLURM's path on this machine: tools/pretrain.py launched by Hydra's submitit launcher (`submitit_local`, the
same protocol as `submitit_slurm`), a sweep of two settings each in its own run folder, the time-out signal
mid-run, the job checkpointed and requeued, and a requeued run that ends bit-identical to an uninterrupted one
(the assertions of tests/test_resume.py). The finished run's report is checked here too (the engine writes it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job's tasks in /proc")]

REPO = Path(__file__).resolve().parents[1]
STEPS = 40


def _common(root: Path, out_dir: Path) -> list[str]:
    return ["task=simclr", "dataset=synthetic", f"dataset.root={root}", f"trainer.out_dir={out_dir}",
            "encoder.base_width=8", "trainer.batch_size=2", "trainer.num_workers=0", f"trainer.max_steps={STEPS}",
            "trainer.log_every=4", "trainer.checkpoint_every=4", "trainer.progress=false",
            "task.data.transform.size=32"]


def _job_tasks(sweep: Path) -> list[int]:
    """The pids of the submitit tasks (``python -m submitit.core._submit SWEEP/.submitit/JOB``) of this sweep."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "submitit.core._submit" in command and any(str(sweep) in part for part in command):
            pids.append(int(proc.name))
    return pids


def test_submitit_local_sweep_requeues_on_timeout_and_resumes_bit_identical(synthetic_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    sweep = tmp_path / "sweep"
    # The uninterrupted reference runs meanwhile, as a plain single run.
    reference = subprocess.Popen([sys.executable, "tools/pretrain.py", *_common(synthetic_root, tmp_path / "straight")],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    launcher = subprocess.Popen(
        [sys.executable, "tools/pretrain.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         *_common(synthetic_root, sweep), "trainer.report=true", "optim.lr=0.001,0.002"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # SLURM sends the time-out signal (USR2) to every task; here once both jobs have saved a checkpoint (step 4
        # or later: last.pt, since keep_last prunes the step files of a job that runs ahead).
        deadline = time.monotonic() + 300
        while not all((sweep / job / "checkpoints" / "last.pt").exists() for job in ("0", "1")):
            assert launcher.poll() is None and time.monotonic() < deadline, "the sweep ended before step 4"
            time.sleep(0.05)
        tasks = _job_tasks(sweep)
        assert len(tasks) == 2
        for pid in tasks:
            os.kill(pid, signal.SIGUSR2)
        output, _ = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]

    for job, lr in (("0", 0.001), ("1", 0.002)):  # each setting in its own folder, each requeued and resumed
        log = (sweep / job / "pretrain.log").read_text()
        stopped = re.search(r"stop requested: saved step (\d+)", log)
        assert stopped and 4 <= int(stopped.group(1)) < STEPS, log[-2000:]  # saved at the signal, mid-run
        assert f"resuming from {sweep / job / 'checkpoints' / 'last.pt'} at step {stopped.group(1)}" in log
        assert f"finished at step {STEPS}" in log
        state = torch.load(sweep / job / "checkpoints" / "last.pt", weights_only=True)
        assert state["step"] == STEPS and state["config"]["optim"]["lr"] == lr
    job_logs = sorted((sweep / ".submitit").glob("*/*_0_log.out"))  # rank 0's log of each job
    assert len(job_logs) == 2 and all("Requeued job" in p.read_text() for p in job_logs)

    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(sweep / "0" / "checkpoints" / "last.pt", weights_only=True)
    assert straight["model"].keys() == resumed["model"].keys()
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    for pid, moments in straight["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg"], resumed["optimizer"]["state"][pid]["exp_avg"])
    assert straight["sampler"] == resumed["sampler"]

    # The engine's report at the end of the requeued run.
    report = (sweep / "0" / "report.md").read_text()
    assert "training SimCLR" in report and f"finished at step {STEPS}" in report
    for name in ("train/loss", "train/lr", "train/embedding_rankme", "train/similarity_gap"):
        assert f"`{name}`" in report
    for png in ("report_loss_lr.png", "report_monitors.png", "report_diagnostics.png"):
        with Image.open(sweep / "0" / png) as image:
            assert image.format == "PNG" and image.width >= 600
