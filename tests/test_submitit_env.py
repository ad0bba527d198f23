"""The process group's variables from submitit's job environment, as torchrun would set them."""

from __future__ import annotations

import os

import pytest
import torch

from vidssl.distributed import adopt_submitit_environment
from vidssl.configs import CONFIG_DIR

TORCHRUN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in TORCHRUN + ("SUBMITIT_EXECUTOR",):
        # set first, so that the undo removes what the code under test sets (delenv of an absent name
        # records nothing, and a leaked WORLD_SIZE=2 would make later tests wait for a process group)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_local_job_environment_gives_torchruns_variables(clean_env):
    clean_env.setenv("SUBMITIT_EXECUTOR", "local")
    for name, value in {"SUBMITIT_LOCAL_JOB_ID": "31337", "SUBMITIT_LOCAL_NTASKS": "2",
                        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                        "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        clean_env.setenv(name, value)
    assert adopt_submitit_environment()
    assert {k: os.environ[k] for k in TORCHRUN} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(20000 + 31337 % 20000)}


def test_slurm_job_on_four_nodes(clean_env):
    import submitit

    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    for name, value in {"SLURM_JOB_ID": "123456", "SLURM_NTASKS": "32", "SLURM_JOB_NUM_NODES": "4",
                        "SLURM_NODEID": "2", "SLURM_PROCID": "21", "SLURM_LOCALID": "5"}.items():
        clean_env.setenv(name, value)
    # the node list is expanded by `scontrol`, absent here: the job's first node stands in
    clean_env.setattr(submitit.slurm.slurm.SlurmJobEnvironment, "hostnames", property(lambda self: ["gpu07", "gpu08"]))
    assert adopt_submitit_environment()
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_WORLD_SIZE"],
            os.environ["MASTER_ADDR"]) == ("21", "5", "32", "8", "gpu07")


def test_left_alone_under_torchrun_or_without_submitit(clean_env):
    assert not adopt_submitit_environment()  # a plain process
    clean_env.setenv("SUBMITIT_EXECUTOR", "local")
    clean_env.setenv("WORLD_SIZE", "4")  # torchrun inside a submitit job: its variables win
    assert not adopt_submitit_environment() and "RANK" not in os.environ


def test_more_gpus_than_tasks_is_refused(clean_env):
    clean_env.setenv("SUBMITIT_EXECUTOR", "local")
    clean_env.setenv("SUBMITIT_LOCAL_JOB_ID", "1")
    clean_env.setenv("SUBMITIT_LOCAL_NTASKS", "1")
    clean_env.setattr(torch.cuda, "device_count", lambda: 8)
    with pytest.raises(ValueError, match="tasks_per_node=8"):
        adopt_submitit_environment()


def test_slurm_preset_runs_one_task_per_gpu_and_requeues():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pretrain", overrides=["hydra/launcher=slurm", "hydra.launcher.nodes=4",
                                             "hydra.launcher.gpus_per_node=4", "trainer.out_dir=/runs/x"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (4, 4, 4)
    assert launcher.max_num_timeout > 0  # submitit's default 0 would not requeue a timed-out job
    assert cfg.hydra.sweep.dir == "/runs/x"  # each setting of a sweep trains in RUN/N


def test_nothing_leaks_into_later_tests():
    assert not any(name in os.environ for name in TORCHRUN + ("SUBMITIT_EXECUTOR",))
