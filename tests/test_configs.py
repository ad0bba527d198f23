"""Every config in the tree composes and instantiates; a wrong key or value fails before any work.

The group folders are globbed, so a colleague's new `vidssl/configs/task/<name>.yaml` or encoder is covered
without touching this file.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from vidssl.configs import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
CONFIGS = CONFIG_DIR


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def pretrain_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("pretrain", overrides=["dataset.root=/nonexistent", "trainer.out_dir=/nonexistent", *overrides])


def test_the_groups_are_populated():
    for group in ("task", "encoder", "dataset", "optim", "trainer"):
        assert names(group), f"vidssl/configs/{group}/ is empty"
    assert {"simclr", "moco"} <= set(names("task"))
    assert set(names("dataset")) >= {"synthetic", "folder", "csv", "ucf101", "hmdb51", "kinetics", "vggsound"}


@pytest.mark.parametrize("task", names("task"))
def test_every_task_builds_with_its_default_encoder(task):
    cfg = pretrain_cfg(f"task={task}")
    assert set(cfg.task) == {"model", "data"}, f"vidssl/configs/task/{task}.yaml must hold exactly `model` and `data`"
    torch.manual_seed(0)
    model = instantiate(cfg.task.model)
    assert isinstance(model, torch.nn.Module) and isinstance(model.encoder, torch.nn.Module)
    assert callable(getattr(model, "forward"))
    data = instantiate(cfg.task.data, _convert_="all")  # as tools/pretrain.py does
    from vidssl.datasets.dataset import VideoDataset

    # The data section must be VideoDataset keyword arguments (the entry point passes them as they are).
    inspect.signature(VideoDataset).bind(root="r", entries=[], seed=0, **data)
    assert callable(data["sampler"]) and callable(data["transform"])


@pytest.mark.parametrize("encoder", names("encoder"))
def test_every_encoder_builds(encoder):
    cfg = pretrain_cfg(f"encoder={encoder}")
    module = instantiate(cfg.encoder)
    assert isinstance(module, torch.nn.Module) and module.out_channels > 0


@pytest.mark.parametrize("dataset", names("dataset"))
def test_every_dataset_config_mirrors_its_loader(dataset):
    cfg = pretrain_cfg(f"dataset={dataset}")
    loader = get_method(cfg.dataset._target_)
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.dataset).items() if k != "_target_"}
    inspect.signature(loader).bind(**kwargs)  # every key is an argument of the loader
    assert "root" in kwargs


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_folder_csv_and_synthetic_datasets_instantiate_on_tiny_layouts(tmp_path):
    for name in ("a/v0.mp4", "a/v1.mp4", "b/v2.mp4"):
        _touch(tmp_path / "folder" / name)
    entries = instantiate(pretrain_cfg("dataset=folder", f"dataset.root={tmp_path / 'folder'}").dataset)
    assert sorted(e.path for e in entries) == ["a/v0.mp4", "a/v1.mp4", "b/v2.mp4"]

    root = tmp_path / "csv"
    for name in ("videos/x.mp4", "videos/y.mp4"):
        _touch(root / name)
    (root / "manifest.csv").write_text("path,label,split\nvideos/x.mp4,0,train\nvideos/y.mp4,1,val\n")
    entries = instantiate(pretrain_cfg("dataset=csv", f"dataset.root={root}", "dataset.manifest=manifest.csv").dataset)
    assert [e.path for e in entries] == ["videos/x.mp4"]
    entries = instantiate(pretrain_cfg("dataset=synthetic", f"dataset.root={root}").dataset)
    assert [e.path for e in entries] == ["videos/x.mp4"]


@pytest.mark.parametrize("optim", names("optim"))
def test_every_optimizer_is_a_partial_of_the_parameters(optim):
    factory = instantiate(pretrain_cfg(f"optim={optim}").optim)
    optimizer = factory([torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(optimizer, torch.optim.Optimizer)


@pytest.mark.parametrize("trainer", names("trainer"))
def test_every_trainer_config_builds(trainer, tmp_path):
    from vidssl.train.trainer import Trainer

    assert isinstance(instantiate(pretrain_cfg(f"trainer={trainer}", f"trainer.out_dir={tmp_path}").trainer), Trainer)


@pytest.mark.parametrize("config", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_top_level_config_composes(config):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        assert compose(config) is not None


def _pretrain(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, str(REPO / "tools" / "pretrain.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=env)


def test_wrong_key_or_value_fails_with_hydras_message_before_any_work(tmp_path):
    run = tmp_path / "run"
    bad_key = _pretrain("dataset.root=/nowhere", f"trainer.out_dir={run}", "trainer.max_step=5")
    assert bad_key.returncode != 0 and "max_step" in bad_key.stderr
    bad_group = _pretrain("task=no_such_task", "dataset.root=/nowhere", f"trainer.out_dir={run}")
    assert bad_group.returncode != 0 and "no_such_task" in bad_group.stderr
    bad_value = _pretrain("dataset.root=/nowhere", f"trainer.out_dir={run}", "trainer.precision=fp8")
    assert bad_value.returncode != 0 and "trainer.precision" in bad_value.stderr
    missing = _pretrain(f"trainer.out_dir={run}")
    assert missing.returncode != 0 and "dataset.root" in missing.stderr
    assert not (run / "checkpoints").exists()
