"""It really learns: a short CRW / MAST-style pretraining gives better label propagation than random init.

The real path end to end: `tools/pretrain.py` (Hydra configs, VideoDataset, the engine, checkpoints,
the periodic propagation evaluator writing mask overlays to TensorBoard) trains on the synthetic
corpus's train videos; the checkpoint's encoder is rebuilt by `vidssl.checkpoint.load_encoder` and
scored by label propagation (`vidssl.eval.propagate`) + DAVIS J&F (`vidssl.eval.davis`) on the
held-out DAVIS val split (its first 8 sequences, their first 24 frames, to keep the file fast).
The raw-pixel (Lab) baseline is printed beside them; it is strong on this corpus (flat-coloured
sprites) and not asserted against.

Measured on 2 shared CPU cores, J&F-Mean on that subset (see each test for the bars):
    pixels 0.39, random-init resnet18_dense (base_width 16) 0.11, MAST 100 steps 0.32-0.35,
    CRW 100 steps 0.05-0.21 across seeds and configurations (not robust: see its test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vidssl.checkpoint import load_encoder
from vidssl.eval.features import EncoderFeatures, PixelFeatures
from vidssl.eval.periodic import PropagationEvaluator

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ENCODER = {"_target_": "vidssl.encoders.frame.resnet18_dense", "base_width": 16}
SUBSET = {"max_sequences": 8, "max_frames": 24}


@pytest.fixture(scope="module")
def single_thread():
    # On 2 shared cores, torch's two intra-op threads wait on each other whenever another process
    # holds a core: elementwise ops measured ~60× slower than with one thread. One thread keeps the
    # timings of this file stable whatever else runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def evaluator(synthetic_root: Path) -> PropagationEvaluator:
    return PropagationEvaluator(synthetic_root / "davis", split="val", **SUBSET)


@pytest.fixture(scope="module")
def baselines(evaluator: PropagationEvaluator, single_thread) -> dict[str, float]:
    from omegaconf import OmegaConf

    pixels = evaluator.evaluate(PixelFeatures())["J&F-Mean"]
    random = evaluator.evaluate(EncoderFeatures(load_encoder("random", OmegaConf.create(ENCODER))))["J&F-Mean"]
    return {"pixels": pixels, "random": random}


def pretrain(root: Path, out: Path, task: str, steps: int, *overrides: str) -> float:
    """Run `tools/pretrain.py` as a user would; returns its wall time in seconds."""
    davis_root = root / "davis"
    command = [
        sys.executable, "tools/pretrain.py", f"task={task}", "dataset=synthetic", f"dataset.root={root}",
        f"encoder.base_width={ENCODER['base_width']}", f"trainer.max_steps={steps}", f"trainer.out_dir={out}",
        "trainer.batch_size=8", "trainer.warmup_steps=10", "trainer.num_workers=1", "trainer.progress=false",
        # the periodic evaluator runs once, at the end, on one short sequence: it must draw the masks
        f"trainer.eval_every={steps}",
        "trainer.evaluator={_target_:vidssl.eval.periodic.PropagationEvaluator,"
        f"davis_root:'{davis_root}',max_sequences:1,max_frames:8}}",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see `single_thread`
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    return seconds


def propagation_images(run: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


def trained_score(evaluator: PropagationEvaluator, run: Path) -> float:
    return evaluator.evaluate(EncoderFeatures(load_encoder(run)))["J&F-Mean"]


def training_losses(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    return [s.value for s in events.Scalars("train/loss")]


def test_crw_pretraining_learns_the_walk(synthetic_root, tmp_path, evaluator, baselines, single_thread) -> None:
    """CRW, 100 steps of batch 8 (5-frame clips at 64 px, dense nodes, lr 3e-4).

    Not met (issue 5): J&F clearly above random init. Measured J&F-Mean after 100 steps against 0.11
    at random init (pixels 0.39): dense nodes 0.21 (seed 0), 0.09 (seed 1); lr 1e-3 0.12; lr 1e-4
    0.17; crops at the corpus's native scale (area 0.2-0.3) 0.17, 0.05; patch nodes 24 px / stride 8
    0.09, 0.07; 32 px / stride 16 at native scale 0.09 (9 nodes), 0.16 (16 nodes, 2× slower).
    The seed-to-seed spread (0.05-0.21) is larger than any gain, so no J&F bar is robust and none is
    asserted; J&F is printed beside the baselines.
    Why (measured): a palindrome walk comes home under any consistent node-to-node matching, and dense
    nodes can match by absolute position (the encoder sees the zero-padded border); the worst run
    matched a 16-px shifted frame by position for 36 % of its cells (random init 32 %, MAST 17 %).
    What is asserted is what is robust: the walk is learnt, its loss falls from ~2.4 to ~1.4.
    """
    seconds = pretrain(synthetic_root, tmp_path / "crw", "crw", 100, "optim.lr=3e-4")
    score = trained_score(evaluator, tmp_path / "crw")
    print(f"\nCRW J&F-Mean {score:.3f} after {seconds:.0f} s of pretraining | random init "
          f"{baselines['random']:.3f} | pixels {baselines['pixels']:.3f}")
    assert propagation_images(tmp_path / "crw"), "the periodic evaluator wrote no mask overlay"
    losses = training_losses(tmp_path / "crw")
    assert losses[-1] < 0.75 * losses[0], losses


def test_mast_pretraining_beats_random_init(synthetic_root, tmp_path, evaluator, baselines, single_thread) -> None:
    """MAST-style reconstruction, 100 steps of batch 8 (5-frame clips at 64 px, native scale crops).

    Measured J&F-Mean: 0.35 (seed 0) and 0.32 (seed 1) against 0.11 at random init (pixels 0.39);
    training took 40-180 s depending on the load of the shared cores. Bar: random + 0.12.
    """
    seconds = pretrain(synthetic_root, tmp_path / "mast", "mast", 100)
    score = trained_score(evaluator, tmp_path / "mast")
    print(f"\nMAST J&F-Mean {score:.3f} after {seconds:.0f} s of pretraining | random init "
          f"{baselines['random']:.3f} | pixels {baselines['pixels']:.3f}")
    assert propagation_images(tmp_path / "mast"), "the periodic evaluator wrote no mask overlay"
    assert score > baselines["random"] + 0.12
