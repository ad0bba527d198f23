"""`vidssl.run`: a checkpoint of every task saves, loads and rebuilds the same modules; version-1 files (written
by vidssl before `format_version`, tests/fixtures/checkpoints_v1) still load and give the features their own
evaluation gave; the run folder's layout is spelled in one place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vidssl.eval.features import build_feature_fn
from vidssl.eval.finetune import context_readout, load_trained
from vidssl.run import FORMAT_VERSION, Checkpoint, Exports, RunDir
from vidssl.configs import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "tests" / "fixtures" / "checkpoints_v1"
TASKS = ("simclr", "moco", "cpc", "dpc", "memdpc", "crw", "mast", "selavi")


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(V1 / "expected.pt", weights_only=True)


@pytest.mark.parametrize("task", TASKS)
def test_version_1_checkpoints_load_and_give_the_same_features(task, expected, tmp_path, one_thread):
    checkpoint = Checkpoint.load(V1 / f"{task}.pt")
    assert checkpoint.format_version == 1 and checkpoint.step == 1
    assert checkpoint.task_config["_target_"].startswith("vidssl.tasks.")
    features = build_feature_fn("checkpoint", checkpoint=V1 / f"{task}.pt")
    want = expected["tasks"][task]
    assert features.layer == want["layer"]
    torch.testing.assert_close(features(expected["frame"]), want["features"], rtol=0, atol=0)
    task_module = checkpoint.build_task()  # the whole task rebuilds from the file's config and loads strictly
    assert not task_module.training
    # Re-saved, it is a version-2 file with the exports written down, and reads back the same.
    again = Checkpoint.load(checkpoint.save(tmp_path / "v2.pt"))
    assert again.format_version == FORMAT_VERSION == 2 and again.exports == checkpoint.exports
    assert torch.load(tmp_path / "v2.pt", weights_only=True)["exports"] == checkpoint.exports.to_dict()
    if "context" in want:
        encoder, source = load_trained(str(V1 / f"{task}.pt"), None)
        with torch.no_grad():
            out = context_readout(encoder, 4, source).eval()(expected["clip"])
        torch.testing.assert_close(out, want["context"], rtol=0, atol=0)


def test_tasks_export_what_evaluation_reads():
    exports = {task: Checkpoint.load(V1 / f"{task}.pt").exports for task in TASKS}
    assert exports["mast"].feature_layer == "output" and exports["crw"].feature_layer is None
    assert exports["dpc"].readout["aggregators"] == ["aggregator"] and exports["dpc"].readout["kernel_size"] == 3
    assert exports["memdpc"].readout["aggregators"] == ["aggregator", "aggregator_backward"]
    assert exports["selavi"].capabilities == ("cluster_heads",)
    assert exports["simclr"] == Exports()
    with pytest.raises(KeyError, match="aggregator"):
        Checkpoint.load(V1 / "simclr.pt").readout_states()


def _task_config(task: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"task={task}", "dataset.root=/d", "trainer.out_dir=/r"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("task", TASKS)
def test_save_load_build_gives_the_same_outputs_for_every_task(task, tmp_path):
    old = Checkpoint.load(V1 / f"{task}.pt")  # tiny modules of every task; perturbed so no init matches them
    model = old.build_task()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    Checkpoint.of_task(model, old.config, source="trained").save(tmp_path / "run" / "checkpoints" / "last.pt")
    loaded = Checkpoint.load(tmp_path / "run")  # a run folder means its last.pt
    assert loaded.exports == old.exports and loaded.config == old.config
    rebuilt, encoder = loaded.build_task(), loaded.build_encoder()
    torch.testing.assert_close(rebuilt.state_dict(), model.state_dict(), rtol=0, atol=0)
    model.eval()
    encoder.eval()
    video = torch.randn(1, 3, 8, 16, 16) if task not in ("crw", "mast") else torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encoder(video), model.encoder(video), rtol=0, atol=0)


def test_the_random_twin_is_seeded_and_builds_what_the_config_says():
    config = _task_config("dpc")
    encoder_cfg = {**config["encoder"], "base_width": 2}
    a = Checkpoint.open("random", encoder=encoder_cfg).build_encoder()
    torch.manual_seed(123)  # the twin does not depend on, nor disturb, the caller's random stream
    state = torch.get_rng_state()
    b = Checkpoint.random(encoder=encoder_cfg).build_encoder()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    stats = Checkpoint.random(encoder={**encoder_cfg, "track_running_stats": False}).build_encoder(running_stats=True)
    assert any(k.endswith("running_mean") for k in stats.state_dict())
    with pytest.raises(ValueError, match="encoder config"):
        Checkpoint.random().build_encoder()


def test_load_into_names_what_does_not_fit_and_refuses_another_task(tmp_path):
    source = Checkpoint.load(V1 / "simclr.pt")
    task = source.build_task()
    loaded, problems = source.load_into(task, "model", config=source.config)
    assert loaded == len(task.state_dict()) and problems == []
    other = {"task": {"model": {"_target_": "vidssl.tasks.moco.MoCo"}}}
    with pytest.raises(ValueError, match="holds a vidssl.tasks.simclr.SimCLR task, this run trains"):
        source.load_into(task, "model", config=other)
    small = torch.nn.Conv3d(3, 8, 1)
    with pytest.raises(RuntimeError, match="missing .*unexpected"):
        source.load_into(small, "encoder")
    assert source.load_into(small, "encoder", strict=False)[0] == 0


def test_model_config_changes_are_refused_naming_the_keys():
    source = Checkpoint.load(V1 / "dpc.pt")
    same = {**source.config, "trainer": {"max_steps": 99}}
    source.refuse_model_change(same)  # only the model sections count
    changed = {**source.config, "task": {**source.config["task"],
                                          "model": {**source.config["task"]["model"], "kernel_size": 1}}}
    with pytest.raises(ValueError, match=r"different model config \(task.model.kernel_size\)"):
        source.refuse_model_change(changed)


def test_a_newer_format_is_refused_and_a_non_dict_named(tmp_path):
    torch.save({"format_version": FORMAT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="new.pt: checkpoint format 3 is newer"):
        Checkpoint.load(tmp_path / "new.pt")
    torch.save([1], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: not a vidssl checkpoint"):
        Checkpoint.load(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Checkpoint.load(tmp_path / "absent.pt")


def test_the_run_folder_layout():
    run = RunDir("RUN")
    assert run.last == Path("RUN/checkpoints/last.pt") and run.best == Path("RUN/checkpoints/best.pt")
    assert run.step(12) == Path("RUN/checkpoints/step_0000012.pt") and run.config == Path("RUN/config.yaml")
    assert run.skipped == Path("RUN/skipped.csv") and run.scalars_csv == Path("RUN/scalars.csv")


def test_the_trainer_writes_version_2_with_the_tasks_exports(tmp_path):
    from tiny_encoders import TinyVideoEncoder

    from vidssl.tasks.dpc import DPC
    from vidssl.train import Trainer

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict:
            return {"video": torch.randn(3, 8, 16, 16, generator=torch.Generator().manual_seed(i)), "index": i}

    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=1)
    config = {"task": {"model": {"_target_": "vidssl.tasks.dpc.DPC", "kernel_size": 1}}}
    Trainer(max_steps=1, batch_size=2, out_dir=tmp_path, num_workers=0, progress=False, device="cpu").fit(
        task, Blocks(), lambda groups: torch.optim.SGD(groups, lr=0.0), config=config)
    saved = torch.load(RunDir(tmp_path).last, weights_only=True)
    assert saved["format_version"] == 2 and saved["exports"]["readout"]["aggregators"] == ["aggregator"]
    assert Checkpoint.load(tmp_path).exports == Exports.of_task(DPC, config["task"]["model"])


def test_checkpoint_random_is_features_random():
    encoder_cfg = {"_target_": "vidssl.encoders.frame.resnet18_dense", "base_width": 1}
    frame = torch.randint(0, 256, (16, 24, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    one = build_feature_fn("random", encoder_cfg=encoder_cfg)
    other = build_feature_fn("checkpoint", checkpoint="random", encoder_cfg=encoder_cfg)
    assert one.layer == other.layer == "layer3"
    torch.testing.assert_close(one(frame), other(frame), rtol=0, atol=0)
    with pytest.raises(ValueError, match="checkpoint=random needs an encoder config"):
        build_feature_fn("checkpoint", checkpoint="random")
