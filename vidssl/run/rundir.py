"""`RunDir`: the one place that spells out what a training run leaves in its folder."""

from __future__ import annotations

from pathlib import Path

# name -> path inside the run folder (``trainer.out_dir``); TensorBoard's events go into the folder itself.
LAYOUT = {
    "checkpoints": "checkpoints",       # step_<step, 7 digits>.pt (the newest trainer.keep_last), last.pt, best.pt
    "last": "checkpoints/last.pt",      # the newest step; rerunning the same command resumes from it
    "best": "checkpoints/best.pt",      # the best by the run's best_metric
    "config": "config.yaml",            # the resolved config
    "scalars_csv": "scalars.csv",       # every logged scalar: step,name,value
    "scalars_txt": "scalars.txt",       # a line per logging step
    "skipped": "skipped.csv",           # the bad files met: path,segment,reason
    "log": "pretrain.log",              # the console's lines and a failed run's traceback
    "report": "report.md",              # the run's report and its report_*.png plots (vidssl.run.report)
}


class RunDir:
    """The paths of a run folder, by name (`LAYOUT`): ``RunDir(out).last`` is ``out/checkpoints/last.pt``."""

    root: Path
    checkpoints: Path
    last: Path
    best: Path
    config: Path
    scalars_csv: Path
    scalars_txt: Path
    skipped: Path
    log: Path
    report: Path

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        for name, relative in LAYOUT.items():
            setattr(self, name, self.root / relative)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def step(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pt"

    def steps(self) -> list[Path]:
        """The ``step_*.pt`` files, oldest first (zero-padded names sort by step)."""
        return sorted(self.checkpoints.glob("step_*.pt"))
