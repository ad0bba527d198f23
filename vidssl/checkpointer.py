"""A run's checkpoint files: ``step_<step>.pt`` (the newest few), ``last.pt`` and ``best.pt``, each atomic."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vidssl.checkpoint import atomic_write_bytes, load_checkpoint, prune_step_checkpoints, serialize, step_path


class Checkpointer:
    """Saves named objects into one checkpoint and loads the newest one back.

    Args:
        directory: where the files go (``RUN/checkpoints``).
        keep_last: how many ``step_<step, 7 digits>.pt`` files to keep (0: none; ``last.pt`` always stays).
    """

    def __init__(self, directory: Path, keep_last: int) -> None:
        self.directory = directory
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best(self) -> Path:
        return self.directory / "best.pt"

    def load(self) -> dict[str, Any] | None:
        """``last.pt`` (loaded with ``weights_only=True``), or None when the run has none yet."""
        return load_checkpoint(self.last) if self.last.exists() else None

    def save(self, parts: Mapping[str, Any], *, step: int, best: bool = False) -> None:
        """Write ``{name: part.state_dict() (or part itself when it has none)}`` as the checkpoint of ``step``.

        The step file and ``best.pt`` (when ``best``) come first and ``last.pt`` last: whoever resumes
        trusts ``last.pt`` to be complete, and each file is written whole or not at all.
        """
        data = serialize({name: part.state_dict() if hasattr(part, "state_dict") else part
                          for name, part in parts.items()})
        if self.keep_last > 0:
            atomic_write_bytes(step_path(self.directory, step), data)
            prune_step_checkpoints(self.directory, self.keep_last)
        if best:
            atomic_write_bytes(self.best, data)
        atomic_write_bytes(self.last, data)
