"""SeLaVi really learns: clusters of the synthetic audio-visual corpus agree with its classes.

Real path: `tools/pretrain.py task=selavi` trains (engine, VideoDataset with audio, the task), then
`tools/pseudo_label.py` labels every clip of the corpus from the checkpoint, and the CSV is scored by
`vidssl.eval.clustering.evaluate_labels` against the manifest. The baseline is the same task at random
initialisation (`checkpoint=random`), clustered the same way: balanced clusters by Sinkhorn-Knopp over
the whole corpus (``equipartition=true``), since a random network's argmax puts nearly every clip in one
cluster (NMI ≈ 0) and would make any margin look large. The audio-only and video-only heads are scored
the same way (``modalities=[audio]`` / ``[video]``).

Measured on this 2-core machine, 40 steps of batch 16 at encoder width 16 (the test's settings; the run is
bit-reproducible): NMI trained / random init — audio-visual 0.752 / 0.204, audio heads 0.781 / 0.634,
video heads 0.175 / 0.184 (the video heads need far longer than this budget: reported, not asserted).
Quiet machine: training 39 s, the whole test 71 s (13 s of it the corpus fixture); with colleagues'
jobs running (load 3-8) training took 134-177 s. Other settings measured: online codes with a 64-clip
queue, 30 steps, 0.64 / 0.20 (at lr 3e-3 and 80 steps it drifted to 0.51); encoder width 8, 0.47 / 0.18.
The bar, +0.2 over random init, is well under the 0.55 margin measured. The task's last training labels
had cluster sizes 5-9 (56 clips, K=8) and its 3-iteration Sinkhorn codes over the corpus column sums
6.0-13.0 (N/K = 10): the bounds are 0.5-1.5x.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vidssl.datasets.formats import synthetic
from vidssl.eval.clustering import cluster_metrics, evaluate_labels
from vidssl.pseudo_label import labelling_dataset, random_task, task_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 40
SMALL = ["encoder.base_width=16"]  # the task's audio_cnn is width 16 already


def _tool(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


MODALITIES = {"audio-visual": None, "video": ["video"], "audio": ["audio"]}


@torch.no_grad()
def _scores_by_modality(tasks: dict[str, torch.nn.Module], dataset) -> tuple[dict, torch.Tensor]:
    """Head-0 log-probabilities of every clip for each task, from both modalities and from each alone.

    One pass over the clips serves every task (decoding dominates the cost), and each task runs its
    encoders once per batch. Outputs: ({task: {modality: N×K}}, true labels N).
    """
    scores = {t: {m: [] for m in MODALITIES} for t in tasks}
    labels = []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=16):
        labels.append(batch["label"])
        for name, task in tasks.items():
            logits = task.eval().head_logits(task.embed(batch))
            for modality, streams in MODALITIES.items():
                scores[name][modality].append(torch.log_softmax(task.combined_scores(logits, streams)[0], dim=1))
    return {t: {m: torch.cat(s) for m, s in per.items()} for t, per in scores.items()}, torch.cat(labels)


def _nmi(task: torch.nn.Module, log_probs: torch.Tensor, true: torch.Tensor) -> float:
    """NMI of balanced clusters (Sinkhorn over the corpus), as ``pseudo_label.py equipartition=true``."""
    return cluster_metrics(true.numpy(), task.assign([log_probs])[0].argmax(1).numpy())["NMI"]


@pytest.mark.slow
def test_selavi_clusters_match_classes_better_than_random_init(synthetic_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    start = time.perf_counter()
    _tool(str(REPO / "tools" / "pretrain.py"), "task=selavi", "dataset=synthetic", f"dataset.root={synthetic_root}",
          *SMALL, f"trainer.max_steps={STEPS}", "trainer.batch_size=16", "trainer.warmup_steps=5",
          "trainer.num_workers=1", "trainer.progress=false", "trainer.device=cpu", f"trainer.out_dir={run}",
          cwd=tmp_path)
    train_seconds = time.perf_counter() - start

    out = tmp_path / "labels.csv"
    printed = _tool(str(REPO / "tools" / "pseudo_label.py"), f"checkpoint={run}", "dataset=synthetic",
                    f"dataset.root={synthetic_root}", "split=null", "equipartition=true", f"out={out}", cwd=tmp_path)
    assert "clusters" in printed and (tmp_path / "labels_grid.png").exists()
    trained_tool, _ = evaluate_labels(out, synthetic_root / "manifest.csv")

    task, task_cfg = task_from_checkpoint(run)
    dataset = labelling_dataset(synthetic_root, synthetic(synthetic_root, split=None), task_cfg["data"],
                                with_audio=True)
    tasks = {"trained": task, "random": random_task(task_cfg)}
    scores, true = _scores_by_modality(tasks, dataset)
    trained, random = ({m: _nmi(tasks[t], scores[t][m], true) for m in MODALITIES} for t in ("trained", "random"))
    print(f"trained {STEPS} steps in {train_seconds:.0f}s; NMI trained {trained} (tool: {trained_tool['NMI']:.3f}), "
          f"random init {random}; {time.perf_counter() - start:.0f}s in all")

    assert trained["audio-visual"] == pytest.approx(trained_tool["NMI"], abs=1e-6)  # tool and library agree
    assert trained["audio-visual"] > random["audio-visual"] + 0.2

    # The labels the task trained on (its last scheduled Sinkhorn update over the 56 training clips, K=8)
    # fill every cluster about equally, and so do its codes for the whole corpus.
    sizes = torch.bincount(task.labels[0][task.labels[0] >= 0], minlength=8).float()
    codes = task.assign([scores["trained"]["audio-visual"]])[0]
    print(f"training label sizes {sizes.tolist()}; code column sums {codes.sum(0).tolist()}")
    assert sizes.sum() == 56
    assert sizes.min() >= 0.5 * 56 / 8 and sizes.max() <= 1.5 * 56 / 8
    assert torch.allclose(codes.sum(1), torch.ones(80), atol=1e-4)
    # 3 Sinkhorn iterations (the training setting) end on a row normalisation: columns are near, not at, N/K.
    assert codes.sum(0).min() >= 0.5 * 80 / 8 and codes.sum(0).max() <= 1.5 * 80 / 8
