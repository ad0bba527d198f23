"""`RunDir`: the one place that spells out what a training run leaves in its folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """The layout of a run folder (``trainer.out_dir``)::

        RUN/checkpoints/step_<step, 7 digits>.pt   the newest few (trainer.keep_last)
        RUN/checkpoints/last.pt                    the newest step; a rerun resumes from it
        RUN/checkpoints/best.pt                    the best by the run's best_metric
        RUN/config.yaml                            the resolved config
        RUN/scalars.csv, RUN/scalars.txt           every logged scalar (step,name,value / a line per step)
        RUN/skipped.csv                            the bad files met (path,segment,reason)
        RUN/pretrain.log                           the console's lines and a failed run's traceback
        RUN/events.out.tfevents.*                  TensorBoard (the folder itself is the log dir)
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def step(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pt"

    def steps(self) -> list[Path]:
        """The ``step_*.pt`` files, oldest first (zero-padded names sort by step)."""
        return sorted(self.checkpoints.glob("step_*.pt"))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def scalars_csv(self) -> Path:
        return self.root / "scalars.csv"

    @property
    def scalars_txt(self) -> Path:
        return self.root / "scalars.txt"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.csv"

    @property
    def log(self) -> Path:
        return self.root / "pretrain.log"
