"""A run's checkpoint files: ``step_<step>.pt`` (the newest few), ``last.pt`` and ``best.pt``, each atomic."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vidssl.files import atomic_write_bytes
from vidssl.run import FORMAT_VERSION, Checkpoint, RunDir
from vidssl.run.checkpoint import serialize


class Checkpointer:
    """Saves named objects into one checkpoint, keeps the best one, and loads the newest one back.

    Args:
        run_dir: the run folder (its ``checkpoints/``; a path is taken as the run folder).
        keep_last: how many ``step_<step, 7 digits>.pt`` files to keep (0: none; ``last.pt`` always stays).
        best_mode: "min" or "max": whether a lower or a higher metric makes a new ``best.pt``.
    """

    def __init__(self, run_dir: RunDir | str | Path, keep_last: int, *, best_mode: str = "min") -> None:
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.keep_last = keep_last
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.best_mode = best_mode

    def improves(self, value: float, best: float | None) -> bool:
        """The ``best.pt`` rule: whether ``value`` beats ``best`` (the best so far; None: the first always does)."""
        if best is None:
            return True
        return value < best if self.best_mode == "min" else value > best

    def load(self) -> Checkpoint | None:
        """``last.pt`` (loaded with ``weights_only=True``), or None when the run has none yet."""
        return Checkpoint.load(self.run_dir.last) if self.run_dir.last.exists() else None

    def save(self, parts: Mapping[str, Any], *, step: int, best: bool = False) -> None:
        """Write ``{name: part.state_dict() (or part itself when it has none)}`` as the checkpoint of ``step``,
        stamped with the current ``format_version``.

        The step file and ``best.pt`` (when ``best``) come first and ``last.pt`` last: whoever resumes
        trusts ``last.pt`` to be complete, and each file is written whole or not at all.
        """
        data = serialize({"format_version": FORMAT_VERSION,
                          **{name: part.state_dict() if hasattr(part, "state_dict") else part
                             for name, part in parts.items()}})
        if self.keep_last > 0:
            atomic_write_bytes(self.run_dir.step(step), data)
            steps = self.run_dir.steps()
            for old in steps[: max(0, len(steps) - self.keep_last)]:
                old.unlink(missing_ok=True)
        if best:
            atomic_write_bytes(self.run_dir.best, data)
        atomic_write_bytes(self.run_dir.last, data)
