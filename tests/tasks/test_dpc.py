"""DPC: shapes, gradients, where the dense positives are, no peeking at the future, the curriculum."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidssl.configs import CONFIG_DIR
from vidssl.tasks.dpc import DPC, dense_prediction_loss, encode_blocks, scheduled_pred_step
from tiny_encoders import TinyVideoEncoder


def _video(b: int = 3, num_seq: int = 4, seq_len: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, num_seq * seq_len, size, size, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_finite_and_gradients_reach_every_part() -> None:
    torch.manual_seed(0)
    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2)
    out = task({"video": _video()})
    assert set(out) == {"loss", "accuracy", "pred_step", "embedding_std", "embedding_rankme", "embedding_rank_fraction", "similarity_gap"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert out["pred_step"] == 2 and 0 <= out["accuracy"] <= 1
    # Chance level: log of the number of candidates (3 clips × 2 steps × 2×2 positions), roughly.
    assert out["loss"] > 0.3 * math.log(3 * 2 * 4)
    out["loss"].backward()
    for part in (task.encoder, task.aggregator, task.predictor):
        for name, p in part.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_encode_blocks_cuts_time_into_blocks_and_pools_each() -> None:
    encoder = TinyVideoEncoder()
    video = _video(b=2, num_seq=4, seq_len=3)
    maps = encode_blocks(encoder, video, num_seq=4)
    assert maps.shape == (2, 4, 8, 2, 2)
    # Block n of clip b is frames n*3 .. n*3+2 of that clip, encoded on its own.
    block = video[1:2, :, 6:9]
    torch.testing.assert_close(maps[1, 2], encoder(block).mean(2)[0])
    with pytest.raises(ValueError, match="num_seq"):
        encode_blocks(encoder, _video(num_seq=4, seq_len=3)[:, :, :11], num_seq=4)


def _block_layout(video: torch.Tensor, num_seq: int) -> torch.Tensor:
    """B×C×(N·L)×H×W → B×N×C×L×H×W, as `ClipTransform(blocks=N)` delivers it."""
    b, c, t, h, w = video.shape
    return video.reshape(b, c, num_seq, t // num_seq, h, w).transpose(1, 2).contiguous()


@pytest.mark.parametrize("kind", ["dpc", "memdpc", "cpc"])
def test_block_layout_gives_the_same_loss_and_gradients_without_copying_the_clip(kind: str) -> None:
    from vidssl.tasks.cpc import CPC
    from vidssl.tasks.memdpc import MemDPC

    build = {"dpc": lambda: DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2),
             "memdpc": lambda: MemDPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, memory_size=16),
             "cpc": lambda: CPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, hidden_size=16)}[kind]
    torch.manual_seed(0)
    task = build()
    inputs = []
    task.encoder.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    video = _video(b=3, num_seq=4, seq_len=3)
    results = []
    for batch in (video, _block_layout(video, 4)):
        torch.manual_seed(1)  # the same ConvGRU dropout masks for both layouts
        out = task({"video": batch})
        out["loss"].backward()
        results.append((out, {n: p.grad.clone() for n, p in task.named_parameters()}))
        task.zero_grad(set_to_none=True)
    (old, old_grads), (new, new_grads) = results
    assert torch.equal(old["loss"], new["loss"]) and torch.equal(old["accuracy"], new["accuracy"])
    assert all(torch.equal(old_grads[n], new_grads[n]) for n in old_grads)
    # The encoder reads the block layout in place (the batch's own memory); the clip layout is copied.
    block_batch = _block_layout(video, 4)
    inputs.clear()
    task({"video": block_batch})
    assert inputs[0].data_ptr() == block_batch.data_ptr() and inputs[0].shape == (12, 3, 3, 8, 8)
    inputs.clear()
    task({"video": video})
    assert inputs[0].data_ptr() != video.data_ptr()
    with pytest.raises(ValueError, match="num_seq=4"):
        task({"video": _block_layout(video, 2)})  # 2 blocks where the task cuts 4


@pytest.mark.parametrize("name", ["dpc", "memdpc", "cpc", "dpc_paper", "memdpc_paper"])
def test_predictive_coding_configs_deliver_the_sampler_blocks(name: str) -> None:
    from hydra.utils import instantiate

    from vidssl.benchmarks.train import _compose

    data = instantiate(_compose([f"task={name}"]).task.data, _convert_="all")
    assert data["transform"].blocks == data["sampler"].num_seq


def _dense_reference(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Anchor by anchor: logits against every (clip, step, position), positive = the same triple."""
    b, k, d, h, w = pred.shape
    keys = [(bi, ki, y, x) for bi in range(b) for ki in range(k) for y in range(h) for x in range(w)]
    losses, hits = [], 0
    for anchor in keys:
        p = pred[anchor[0], anchor[1], :, anchor[2], anchor[3]]
        logits = torch.stack([p @ target[bi, ki, :, y, x] for bi, ki, y, x in keys])
        positive = keys.index(anchor)
        losses.append(-torch.log_softmax(logits, 0)[positive])
        hits += int(logits.argmax() == positive)
    return torch.stack(losses).mean().item(), hits / len(keys)


def test_dense_loss_matches_slow_reference() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 3, 5, 2, 3, generator=g), torch.randn(2, 3, 5, 2, 3, generator=g)
    loss, accuracy = dense_prediction_loss(pred, target, temperature=1.0, normalize=False)
    want_loss, want_accuracy = _dense_reference(pred, target)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert accuracy.item() == pytest.approx(want_accuracy)


def test_perfect_predictor_scores_one_and_misplaced_predictions_score_zero() -> None:
    b, k, h, w = 2, 3, 2, 2
    n = b * k * h * w
    # Every (clip, step, position) gets its own one-hot feature, so only the exact triple matches.
    target = torch.eye(n).reshape(b, k, h, w, n).permute(0, 1, 4, 2, 3)  # (B, K, D=n, H, W)
    loss, accuracy = dense_prediction_loss(20 * target, target, temperature=1.0, normalize=False)
    assert accuracy == 1 and loss < 1e-3
    for shifted in (target.roll(1, dims=0), target.roll(1, dims=1), target.roll(1, dims=3), target.roll(1, dims=4)):
        loss, accuracy = dense_prediction_loss(10 * shifted, target, temperature=1.0, normalize=False)
        assert accuracy == 0 and loss > 5, "a prediction for another clip/step/position must not count"


def test_predictions_never_see_the_future_blocks() -> None:
    torch.manual_seed(0)
    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, hidden_dropout=0.0)  # deterministic
    captured = []
    task.predictor.register_forward_hook(lambda module, inputs, output: captured.append(output.detach()))
    video = _video()
    task({"video": video})
    changed = video.clone()
    changed[:, :, 2 * 3 :] = torch.randn_like(changed[:, :, 2 * 3 :])  # replace the 2 future blocks
    task({"video": changed})
    first, second = captured[:2], captured[2:]
    assert len(first) == len(second) == 2
    for a, c in zip(first, second):
        torch.testing.assert_close(a, c)


def test_rollout_aggregates_rectified_context_and_feeds_predictions_back() -> None:
    # Replay the recurrence by hand with a 2-layer ConvGRU: the predictor's k-th input must be the top
    # layer's state after the observed blocks and the k-1 earlier (rectified) predictions.
    torch.manual_seed(0)
    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, num_layers=2, hidden_dropout=0.0)
    inputs, outputs = [], []

    def hook(module, args, output):
        inputs.append(args[0].detach())
        outputs.append(output.detach())

    task.predictor.register_forward_hook(hook)
    video = _video()
    task({"video": video})
    with torch.no_grad():
        features = encode_blocks(task.encoder, video, num_seq=4)
        _, hidden = task.aggregator(F.relu(features[:, :2]))  # hidden: (layers, B, D, H, W)
        torch.testing.assert_close(inputs[0], hidden[-1])
        _, hidden = task.aggregator(F.relu(outputs[0]).unsqueeze(1), hidden)
        torch.testing.assert_close(inputs[1], hidden[-1])
    assert not torch.allclose(inputs[0], inputs[1])


def test_curriculum_schedule_and_resume_state() -> None:
    assert [scheduled_pred_step([1, 2, 3], s, 9) for s in range(10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    torch.manual_seed(0)
    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=3, pred_step_schedule=[1, 2, 3])
    assert task({"video": _video()})["pred_step"] == 1
    task.on_train_step_end(5, 9)
    out = task({"video": _video()})
    assert out["pred_step"] == 2 and torch.isfinite(out["loss"])
    # The horizon lives in the state dict, so a resumed run continues the curriculum.
    fresh = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=3, pred_step_schedule=[1, 2, 3])
    fresh.load_state_dict(task.state_dict())
    assert int(fresh.pred_step) == 2


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="pred_step"):
        DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=4)
    with pytest.raises(ValueError, match="pred_step"):
        DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step_schedule=[1, 0])
    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=1)
    with pytest.raises(ValueError, match="num_seq=4"):
        task({"video": torch.randn(1, 3, 10, 8, 8)})


def test_normalised_scores_use_the_temperature() -> None:
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 2, 4, 1, 2, generator=g), torch.randn(2, 2, 4, 1, 2, generator=g)
    loss, _ = dense_prediction_loss(pred, target, temperature=0.5, normalize=True)
    want, _ = _dense_reference(F.normalize(pred, dim=2) / 0.5, F.normalize(target, dim=2))
    assert loss.item() == pytest.approx(want, rel=1e-5)


# ---- equivalence with the official code (fixtures recorded by tests/fixtures/dpc/record.py) ----------------

def test_matches_the_official_dpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same predictions, score matrix, loss and gradient norms as TengdaHan/DPC's DPC_RNN (copied weights,
    same input, same ConvGRU dropout masks), and the same loss in eval mode (batch statistics)."""
    import vidssl.tasks.dpc as dpc_module
    from fixtures.dpc.official_state import ReplayDropout, assert_grad_norms, converted_case

    task, video, expected = converted_case("dpc", tmp_path)
    s = expected["setup"]
    assert task.aggregator.hidden_dropout.p == s["p"]  # the converted config keeps the official dropout
    task.aggregator.hidden_dropout = ReplayDropout(s["p"], s["seed_dropout"])
    scored = []
    original = dpc_module.dense_prediction_loss

    def capture(pred, target, **kwargs):
        scored.append((pred.detach(), target.detach()))
        return original(pred, target, **kwargs)

    monkeypatch.setattr(dpc_module, "dense_prediction_loss", capture)
    task.train()
    out = task({"video": video})
    out["loss"].backward()
    pred, target = scored[0]
    torch.testing.assert_close(pred, expected["predictions"], atol=1e-5, rtol=1e-5)
    rows = pred.permute(0, 1, 3, 4, 2).reshape(-1, pred.shape[2])  # (b, k, y, x) order, as the official rows
    cols = target.permute(0, 1, 3, 4, 2).reshape(-1, target.shape[2])
    torch.testing.assert_close(rows @ cols.T, expected["scores"], atol=1e-5, rtol=1e-5)
    assert torch.equal(expected["target"], torch.arange(len(rows)))
    assert out["loss"].item() == pytest.approx(expected["loss"].item(), abs=1e-5)
    assert out["accuracy"].item() == pytest.approx(expected["accuracy"].item())
    assert_grad_norms(task, expected["grad_norms"])

    task.eval()
    with torch.no_grad():
        assert task({"video": video})["loss"].item() == pytest.approx(expected["eval_loss"].item(), abs=1e-5)


def test_paper_training_options_reach_the_heads() -> None:
    torch.manual_seed(0)
    task = DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, hidden_dropout=0.1, head_init="orthogonal")
    assert task.aggregator.hidden_dropout.p == 0.1
    w = task.predictor[0].weight.flatten(1)
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-5, rtol=0)  # gain 1
    assert torch.equal(task.aggregator.cells[0].gates.bias, torch.zeros_like(task.aggregator.cells[0].gates.bias))
    with pytest.raises(ValueError, match="head_init"):
        DPC(encoder=TinyVideoEncoder(), num_seq=4, pred_step=2, head_init="xavier")


@pytest.mark.parametrize("preset", ["dpc_paper", "memdpc_paper"])
def test_paper_preset_trains_a_few_steps(preset: str, synthetic_root: Path, tmp_path: Path) -> None:
    """The paper presets run end to end (tiny sizes by override) and set the official training options."""
    import os
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from vidssl.run import Checkpoint

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    tiny = ["encoder.base_width=4", "trainer.batch_size=2", "trainer.max_steps=2", "trainer.num_workers=0",
            "trainer.device=cpu", "trainer.progress=false", "task.data.transform.size=64",
            "task.data.sampler.stride=1"]  # the synthetic videos are 48-64 frames: 8×5 frames at stride 1
    if preset == "memdpc_paper":
        tiny.append("task.model.memory_size=32")
    command = [sys.executable, "tools/pretrain.py", f"task={preset}", "dataset=synthetic",
               f"dataset.root={synthetic_root}", f"trainer.out_dir={run}", *tiny]
    result = subprocess.run(command, cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.weight_decay == 1e-5
    assert cfg.trainer.warmup_steps == 0 and cfg.trainer.min_lr_ratio == 1.0
    model = cfg.task.model
    assert model.hidden_dropout == 0.1 and model.head_init == "orthogonal" and model.temperature == 1.0
    assert model.num_seq == 8 and model.pred_step == 3 and not model.normalize
    assert cfg.task.data.transform.per_frame and cfg.task.data.transform.grayscale_mode == "channel"
    assert cfg.encoder.get("track_running_stats", True) is (preset == "memdpc_paper")
    state = Checkpoint.load(run).to_dict()
    assert state["step"] == 2
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)  # constant: no schedule


def test_converters_refuse_what_they_cannot_map() -> None:
    from vidssl.convert import dpc as convert_dpc
    from vidssl.convert import memdpc as convert_memdpc

    with pytest.raises(KeyError, match="network_pred"):  # a fine-tuned classifier, not a pretraining run
        convert_dpc.convert({"state_dict": {"module.backbone.conv1.weight": torch.zeros(64, 3, 1, 7, 7),
                                            "module.final_fc.1.weight": torch.zeros(101, 256)}})
    with pytest.raises(KeyError, match="memory bank"):
        convert_memdpc.convert({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 1, 7, 7)}})
    blocks = {f"backbone.layer{s + 1}.{b}.conv1.weight": torch.zeros(1) for s, n in enumerate((3, 4, 6, 3))
              for b in range(n)}
    config = convert_dpc.encoder_config({**blocks, "backbone.conv1.weight": torch.zeros(64, 3, 1, 7, 7)})
    assert config == {"_target_": "vidssl.encoders.video.r2d3d_34", "base_width": 64, "track_running_stats": False}
    with pytest.raises(ValueError, match="R2D3D-18"):
        convert_dpc.encoder_config({"backbone.layer1.0.conv1.weight": torch.zeros(1),
                                    "backbone.conv1.weight": torch.zeros(64, 3, 1, 7, 7)})


@pytest.mark.parametrize("source", ["dpc", "memdpc"])
def test_converted_config_is_the_paper_preset(source: str, tmp_path: Path) -> None:
    """A converted checkpoint trains and evaluates as task=<source>_paper would build it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fixtures.dpc.official_state import converted_case

    converted_case(source, tmp_path)
    config = torch.load(tmp_path / "converted.pt", weights_only=True)["config"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        preset = compose("pretrain", overrides=[f"task={source}_paper", "dataset.root=x", "trainer.out_dir=y"])
    preset = OmegaConf.to_container(preset, resolve=True)
    model = {k: v for k, v in preset["task"]["model"].items() if k not in ("encoder", "pred_step_schedule")}
    if source == "memdpc":
        model["memory_size"] = 64  # read from the file's memory bank (the fixture's; the paper's is 1024)
    assert config["task"]["model"] == model
    assert config["encoder"] == preset["encoder"]


def test_official_checkpoints_written_with_numpy_1_load(tmp_path: Path) -> None:
    """The published files pickle `best_acc` as NumPy 1.x's `numpy.core.multiarray.scalar`; today's NumPy
    writes `numpy._core`. Both names are allowlisted, nothing else is."""
    import io
    import zipfile

    import numpy as np

    from vidssl.convert import load_official
    from vidssl.convert.dpc import SAFE_GLOBALS

    buffer = io.BytesIO()
    torch.save({"best_acc": np.float64(0.5), "state_dict": {"w": torch.ones(2)}}, buffer)
    legacy = tmp_path / "numpy1.pth.tar"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(legacy, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    state = load_official(legacy, SAFE_GLOBALS)
    assert state["best_acc"] == 0.5 and torch.equal(state["state_dict"]["w"], torch.ones(2))
    with pytest.raises(RuntimeError, match="weights_only"):
        load_official(legacy, [g for g in SAFE_GLOBALS if not isinstance(g, tuple)])
