"""A run's report: ``RUN/report.md`` and PNG plots of its scalars, readable without TensorBoard.

Written by the engine at the end of a run (rank 0) and on demand by ``tools/report.py run=RUN``, from
what the run folder holds: ``scalars.csv`` (every logged scalar) and the text logs (``*.log``: the start
summary and the end line). Plots (matplotlib, drawn off-screen):

- ``report_loss_lr.png``: the training loss and the learning rate over the optimiser steps;
- ``report_monitors.png``: the health monitors (`vidssl.monitors`), with the collapse thresholds drawn;
- ``report_diagnostics.png``: the task's other diagnostics (accuracy, entropies, gradient norm, speed);
- ``report_eval.png``: the evaluator's metrics, when one ran.

A resumed run logged the steps after its last checkpoint twice; the later value of a step is kept.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vidssl.monitors import COLLAPSE_RULES
from vidssl.run.rundir import RunDir

__all__ = ["Report", "read_scalars", "run_summary", "write_report"]

# Which series go into which figure: the training curve, the health monitors, the evaluator's metrics;
# every other train/ scalar is a diagnostic. Progress counters (epoch, pred_step) are not plotted.
LOSS_LR = ("train/loss", "train/lr")
MONITOR_PATTERN = re.compile(r"train/(embedding_\w+|similarity_gap|memory_used|memory_usage_entropy|cluster_\w+|"
                             r"cycle_loss_\d+|transition_entropy)$")
NOT_PLOTTED = {"train/epoch", "train/pred_step", "train/skipped_videos"}

# y-axis labels with units, by series name (without the train/ or eval/ prefix); prefix matches last.
UNITS = {
    "loss": "loss (nats for cross-entropies)",
    "lr": "learning rate",
    "embedding_std": "std per dim. (unit-norm rows)",
    "embedding_rankme": "RankMe (effective dimensions)",
    "embedding_rank_fraction": "RankMe / min(N, D)",
    "similarity_gap": "cosine sim. gap (pos. − neg.)",
    "memory_used": "fraction of slots used",
    "memory_usage_entropy": "memory usage entropy (nats)",
    "memory_entropy": "addressing entropy (nats)",
    "transition_entropy": "transition entropy (nats)",
    "clips_per_sec": "throughput (clips/s)",
    "grad_norm": "grad. norm (before clipping)",
    "sinkhorn_iterations": "Sinkhorn iterations",
    "cluster_": "size (fraction of clips), entropy (÷ log K)",
    "cycle_loss_": "cycle loss (nats)",
    "accuracy": "accuracy (fraction)",
    "entropy": "entropy",
}


def axis_label(name: str) -> str:
    """The y-axis label (with its unit) of a series such as ``train/embedding_rankme``."""
    short = name.split("/", 1)[-1]
    if short in UNITS:
        return UNITS[short]
    for key, label in UNITS.items():
        if key.endswith("_") and short.startswith(key):
            return label
    if "accuracy" in short:
        return f"{short} (fraction)"
    if "J&F" in short or short.startswith(("J-", "F-")):
        return f"{short} (fraction, higher is better)"
    return short


def read_scalars(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``scalars.csv`` (``step,name,value`` rows) → {name: (steps ascending, values)}; a step logged twice
    (a resumed run repeats the steps after its last checkpoint) keeps its later value."""
    series: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["step", "name", "value"]:
            raise ValueError(f"{path}: expected the columns step,name,value, got {reader.fieldnames}")
        for row in reader:
            series.setdefault(row["name"], {})[int(row["step"])] = float(row["value"])
    return {name: (sorted(values), [values[s] for s in sorted(values)]) for name, values in series.items()}


_START = re.compile(r"\] - (training \S+: .*|data: .*|steps \d+ -> .*|checkpoints: .*)$")
_END = re.compile(r"\] - ((?:finished at step|stop requested|already finished at step).*)$")


def run_summary(run: Path) -> tuple[list[str], str | None]:
    """The last start summary (its lines) and the last end line in the run's ``*.log`` files.

    Inputs: run, the run folder (its logs as ``tools/pretrain.py`` writes them, ``[time][logger][LEVEL] -
    message``). Outputs: (start lines, end line or None); ([], None) when the run has no log file.
    """
    start: list[str] = []
    end = None
    for log_file in sorted(run.glob("*.log")):
        for line in log_file.read_text(errors="replace").splitlines():
            if m := _START.search(line):
                if m.group(1).startswith("training "):
                    start = []  # a resumed run's summary replaces the earlier one
                start.append(m.group(1))
            elif m := _END.search(line):
                end = m.group(1)
    return start, end


@dataclass
class Report:
    """What ``write_report`` wrote: the report file and, per PNG, the series plotted in it."""

    path: Path
    figures: dict[Path, list[str]] = field(default_factory=dict)


def _plot(path: Path, title: str, panels: list[tuple[str, list[str]]], scalars: dict, thresholds: dict) -> None:
    """One PNG: a panel per (y label, series names), series against the optimiser step."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display needed (Agg)
    from matplotlib.ticker import MaxNLocator

    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(6.4 * columns, 3.2 * rows), dpi=100, layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, (label, names) in zip(axes, panels):
        for name in names:
            steps, values = scalars[name]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name.split("/", 1)[-1])
            if name in thresholds:
                ax.axhline(thresholds[name], color="tab:red", linestyle="--", linewidth=1,
                           label=f"collapse threshold {thresholds[name]:g}")
        ax.set_title(", ".join(n.split("/", 1)[-1] for n in names) if len(names) < 4 else
                     f"{names[0].split('/', 1)[-1]} … ({len(names)} series)", fontsize="medium")
        ax.set_xlabel("optimiser step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(names) > 1 or any(n in thresholds for n in names):
            ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.savefig(path)


def _panels(names: list[str]) -> list[tuple[str, list[str]]]:
    """One panel per series, except series that share a unit family (cluster sizes, cycle losses)."""
    panels: dict[str, list[str]] = {}
    for name in names:
        short = name.split("/", 1)[-1]
        family = next((k for k in ("cluster_", "cycle_loss_") if short.startswith(k)), name)
        panels.setdefault(family, []).append(name)
    return [(axis_label(group[0]), group) for group in panels.values()]


def write_report(run: str | Path) -> Report:
    """Write ``RUN/report.md`` and its PNGs from ``RUN/scalars.csv`` and the run's logs.

    Raises FileNotFoundError naming ``scalars.csv`` when the folder holds no logged run.
    """
    run = Path(run)
    csv_path = RunDir(run).scalars_csv
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} not found: is {run} a training run folder (trainer.out_dir)?")
    scalars = read_scalars(csv_path)
    thresholds = {f"train/{r.key}": r.threshold for r in COLLAPSE_RULES}
    names = sorted(scalars)
    groups = {
        "loss_lr": ("Training loss and learning rate", [n for n in LOSS_LR if n in scalars]),
        "monitors": ("Health monitors (dashed: collapse thresholds)", [n for n in names if MONITOR_PATTERN.match(n)]),
        "eval": ("Evaluator metrics", [n for n in names if n.startswith("eval/")]),
    }
    taken = {n for _, group in groups.values() for n in group}
    groups["diagnostics"] = ("Task diagnostics", [n for n in names if n.startswith("train/") and n not in taken
                                                  and n not in NOT_PLOTTED])
    report = Report(path=RunDir(run).report)
    label = "/".join(run.resolve().parts[-2:])  # a sweep's job folders are numbers: RUN/0, RUN/1
    for key in ("loss_lr", "monitors", "diagnostics", "eval"):
        title, group = groups[key]
        if not group:
            continue
        png = run / f"report_{key}.png"
        _plot(png, f"{title}: {label}", _panels(group), scalars, thresholds)
        report.figures[png] = group
    start, end = run_summary(run)
    lines = [f"# Run report: {label}", "", f"Run folder: `{run.resolve()}`", ""]
    lines += ["## Start", "", "```", *(start or ["(no start summary: no *.log file in the run folder)"]), "```", ""]
    lines += ["## End", "", "```", end or "(no end line: the run has not finished, or logged to no file)", "```", ""]
    lines += ["## Plots", ""]
    for png, group in report.figures.items():
        lines += [f"![{png.stem}]({png.name})", "", "Series: " + ", ".join(f"`{n}`" for n in group), ""]
    lines += ["## Last values", "", "| series | last step | last | min | max |", "|---|---|---|---|---|"]
    for name in names:
        steps, values = scalars[name]
        lines.append(f"| `{name}` | {steps[-1]} | {values[-1]:.4g} | {min(values):.4g} | {max(values):.4g} |")
    report.path.write_text("\n".join(lines) + "\n")
    return report
