"""V-JEPA weights and runs: an official-format checkpoint converts into the official features and continues
pretraining through trainer.init_from; a SIGKILLed task=vjepa run resumes bit-identically (EMA target and
mask counter included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidssl.run import load_encoder
from vidssl.convert import convert_checkpoint
from vidssl.encoders.vit_video import sincos_3d

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "vjepa"
sys.path[:0] = [str(FIXTURES), str(REPO / "tests")]  # also when a subprocess imports this file
from toy_data import SeededSamples  # noqa: E402
from vjepa_seeded import CASE, seeded_tensor, seeded_video  # noqa: E402


def official_file(kind: str, path: Path) -> Path:
    """The checkpoint dict app/vjepa/train.py saves (layout.pt), filled with the seeded weights."""
    layout = torch.load(FIXTURES / "layout.pt", weights_only=True)[kind]
    grid = (CASE["T"] // CASE["tubelet"], CASE["HW"] // CASE["patch"], CASE["HW"] // CASE["patch"])
    saved = dict(layout["plain"])
    for part, shapes in layout["shapes"].items():
        weights = {}
        for key, shape in shapes.items():
            name = key.removeprefix("module.").removeprefix("backbone.")
            if name in ("pos_embed", "predictor_pos_embed"):  # the sin-cos tables the official model computes
                weights[key] = sincos_3d(shape[-1], *grid, uniform_power=True).unsqueeze(0).double()
            else:
                weights[key] = seeded_tensor(name, shape)
        saved[part] = weights
    torch.save(saved, path)
    return path


@pytest.mark.parametrize("kind", ["sincos", "rope"])
def test_converted_official_checkpoint_gives_official_features(kind, tmp_path):
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)[kind]["features"]
    out = tmp_path / "converted.pt"
    convert_checkpoint("vjepa2", official_file(kind, tmp_path / "official.pt"), out, num_heads=CASE["heads"],
                       predictor_heads=CASE["pred_heads"])
    encoder = load_encoder(out).double().eval()
    with torch.no_grad():
        tokens = encoder.tokens(seeded_video(CASE["input_seed"], CASE["B"], CASE["T"], CASE["HW"]))
    assert torch.allclose(tokens, expected.double(), atol=1e-5, rtol=1e-5)


def test_convert_refuses_other_checkpoints(tmp_path):
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(KeyError, match="not a V-JEPA pretraining checkpoint"):
        convert_checkpoint("vjepa", tmp_path / "other.pt", tmp_path / "out.pt")


class RandomClips(SeededSamples):
    """Clips drawn from (epoch, index): a resumed run sees the same samples."""

    def __init__(self, n: int, frames: int, size: int) -> None:
        super().__init__(n)
        self.frames, self.size = frames, size

    def sample(self, i: int, g: torch.Generator) -> dict:
        return {"video": torch.randn(3, self.frames, self.size, self.size, generator=g), "index": i, "path": str(i)}


def test_init_from_converted_checkpoint_continues_pretraining(tmp_path):
    from hydra.utils import instantiate

    from vidssl.train import Trainer

    out = tmp_path / "converted.pt"
    checkpoint = convert_checkpoint("vjepa", official_file("rope", tmp_path / "official.pt"), out,
                                    num_heads=CASE["heads"], predictor_heads=CASE["pred_heads"])
    cfg = checkpoint.config
    # a RoPE checkpoint does not record its clip: the run's data sets it
    task = instantiate({**cfg["task"]["model"], "encoder": cfg["encoder"], "mask_seed": 3, "num_frames": CASE["T"],
                        "img_size": CASE["HW"]})
    trainer = Trainer(max_steps=2, batch_size=2, out_dir=tmp_path / "run", num_workers=0, progress=False,
                      init_from=out, checkpoint_every=2)
    # lr 0: the step leaves the encoder as loaded, so what is compared is what init_from put there
    trainer.fit(task, RandomClips(4, CASE["T"], CASE["HW"]), lambda groups: torch.optim.AdamW(groups, lr=0.0),
                config={"task": {"model": {"_target_": "vidssl.tasks.vjepa.VJEPA"}}})
    for key, value in checkpoint.model.items():
        if key.startswith("encoder."):
            assert torch.equal(task.state_dict()[key], value.float()), key
    assert int(task.ema_step) == 2 and int(task.mask_step) == 2


def vjepa_run(out_dir: Path, num_workers: int, kill_at: int = 0) -> dict:
    """A tiny RoPE V-JEPA run of 7 steps (checkpoints every 3); with kill_at > 0 the process SIGKILLs itself in
    that forward call, so no handler runs."""
    import os

    from vidssl.encoders.vit_video import VideoViT
    from vidssl.train import Trainer, seed_everything
    from vidssl.tasks.vjepa import VJEPA

    class Killed(VJEPA):
        calls = 0

        def forward(self, batch):
            Killed.calls += 1
            if Killed.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().forward(batch)

    seed_everything(0)
    encoder = VideoViT(embed_dim=32, depth=1, num_heads=2, img_size=32, num_frames=4, patch_size=8, use_rope=True)
    task = Killed(encoder=encoder, num_frames=4, img_size=32, predictor_dim=16, predictor_depth=1, predictor_heads=2,
                  ema=(0.9, 0.99), schedule={"start_lr": 1e-4, "final_lr": 1e-5, "warmup_steps": 2, "final_wd": 0.4})
    trainer = Trainer(max_steps=7, batch_size=2, out_dir=out_dir, num_workers=num_workers, checkpoint_every=3,
                      log_every=2, seed=0, warmup_steps=2, progress=False)
    summary = trainer.fit(task, RandomClips(6, 4, 32), lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.04))
    return {"calls": Killed.calls, "step": summary["step"], "state": task.state_dict()}


KILLED = """
import sys
sys.path.insert(0, sys.argv[2])
from test_vjepa_run import vjepa_run
vjepa_run(sys.argv[1], num_workers=1, kill_at=5)
"""


def test_sigkilled_vjepa_run_resumes_bit_identical(tmp_path, one_thread):
    straight = vjepa_run(tmp_path / "straight", num_workers=0)
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "resumed"), str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)  # step 5 died: step 3's
    assert last["step"] == 3 and int(last["model"]["ema_step"]) == 3 and int(last["model"]["mask_step"]) == 3
    decay = last["optimizer"]["param_groups"][0]
    assert decay["initial_weight_decay"] == 0.04 and 0.04 < decay["weight_decay"] < 0.4  # the official wd schedule ran
    for key, value in last["encoder"].items():  # evaluations read the EMA target, as the official ones
        assert torch.equal(value, last["model"][f"target_encoder.{key}"]), key
    resumed = vjepa_run(tmp_path / "resumed", num_workers=0)  # the same run again, resumed in this process
    assert (resumed["calls"], resumed["step"]) == (4, 7)  # steps 4..7 only
    a, b = straight["state"], resumed["state"]
    assert a.keys() == b.keys() and any(k.startswith("target_encoder.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
