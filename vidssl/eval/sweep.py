"""Choose label-propagation settings on one split, then apply the best once to another.

    table, best = sweep_protocol(davis_root, out, feature_fn, grid={"n_context": [7, 15], "topk": [5, 10]},
                                 split="train", base={...})
    metrics = apply_best(davis_root, out, feature_fn, best, split="val", base={...})

DINOv3 and V-JEPA 2.1 pick their propagation settings on DAVIS *train*; this does the same cleanly.
Every video's features are computed once (`feature_fn` is called once per frame of the split, not
once per setting): the sweep walks the videos, holds one video's features (T×D×h×w) in memory, and
runs every setting of the grid on them, writing each setting's label maps to
``out/sweep-<split>/<setting>/<sequence>/``. Each setting is then scored with the DAVIS-2017
evaluation (`vidssl.eval.davis.evaluate_results`), and the table of all settings is written to
``out/sweep-<split>.csv`` (best first). The best (highest J&F-Mean; the first in grid order on a tie)
is applied once to the other split by `apply_best`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vidssl.datasets.formats import davis, read_mask, write_mask
from vidssl.eval.davis import evaluate_results
from vidssl.eval.propagate import FeatureFn, propagate_dataset, propagate_labels, read_frame

SWEEP_KEYS = ("n_context", "radius", "window", "topk", "temperature")


def grid_settings(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order (the last key varies fastest)."""
    unknown = sorted(set(grid) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"sweep grid keys {unknown}: expected some of {', '.join(SWEEP_KEYS)}")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep grid {key}: expected a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def setting_name(setting: Mapping[str, Any]) -> str:
    """A folder name for one setting: ``n_context=7,topk=5,…``."""
    return ",".join(f"{k}={v}" for k, v in setting.items())


def sweep_protocol(davis_root: str | Path, out: str | Path, feature_fn: FeatureFn, *,
                   grid: Mapping[str, Sequence[Any]], split: str = "train", base: Mapping[str, Any] | None = None,
                   resolution: str = "480p", progress: bool = True) -> tuple[list[dict], dict[str, Any]]:
    """Run every grid setting on ``split`` with each video's features computed once; returns the table and the best.

    Arguments:
      grid: lists of values for some of n_context, radius, window, topk, temperature.
      base: the other `propagate_labels` arguments, shared by every setting (a preset's).
    Returns: the table (one row per setting: its values and J&F-Mean, J-Mean, F-Mean; best first) and
      the best setting (its grid values).
    """
    settings = grid_settings(grid)
    base = dict(base or {})
    clash = sorted(set(base) & set(grid))
    if clash:
        raise ValueError(f"{clash} are both swept and fixed; drop them from the fixed protocol")
    out = Path(out)
    folder = out / f"sweep-{split}"
    sequences = davis(davis_root, split=split, resolution=resolution)
    for sequence in tqdm(sequences, desc=f"sweep {split}", unit="seq", disable=not progress):
        first_mask = read_mask(sequence.annotations[0])
        with torch.inference_mode():
            feats = torch.stack([feature_fn(read_frame(path)) for path in sequence.frames])  # once per video
            for setting in settings:
                target = folder / setting_name(setting) / sequence.name
                target.mkdir(parents=True, exist_ok=True)
                maps = propagate_labels(feats, first_mask, name=sequence.name, **base, **setting)
                for path, label_map in zip(sequence.frames, maps):
                    write_mask(target / f"{path.stem}.png", label_map.numpy())
    table = []
    for setting in settings:
        metrics, _, _ = evaluate_results(davis_root, folder / setting_name(setting), split=split,
                                         resolution=resolution, progress=False)
        table.append({**setting, "J&F-Mean": metrics["J&F-Mean"], "J-Mean": metrics["J-Mean"],
                      "F-Mean": metrics["F-Mean"]})
    order = sorted(range(len(table)), key=lambda i: (-table[i]["J&F-Mean"], i))  # stable: grid order on ties
    table = [table[i] for i in order]
    write_table(out / f"sweep-{split}.csv", table)
    best = {k: table[0][k] for k in grid}
    return table, best


def write_table(path: Path, table: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        for row in table:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k.endswith("Mean") else v)
                             for k, v in row.items()})


def apply_best(davis_root: str | Path, out: str | Path, feature_fn: FeatureFn, best: Mapping[str, Any], *,
               split: str = "val", base: Mapping[str, Any] | None = None, resolution: str = "480p",
               progress: bool = True) -> dict[str, float]:
    """Propagate ``split`` once with the chosen setting, evaluate it, write ``out/best-<split>.json``."""
    out = Path(out)
    results = out / f"best-{split}"
    propagate_dataset(davis_root, results, feature_fn, split=split, resolution=resolution, progress=progress,
                      **dict(base or {}), **best)
    metrics, _, _ = evaluate_results(davis_root, results, split=split, out_dir=out, resolution=resolution,
                                     progress=False)
    (out / f"best-{split}.json").write_text(json.dumps({"setting": dict(best), "metrics": metrics}, indent=1))
    return metrics
