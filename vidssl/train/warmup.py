"""A warm-up no longer than the run: the default 50 steps would make a short run all warm-up and no decay."""

from __future__ import annotations


def fit_warmup(warmup_steps: int, max_steps: int) -> tuple[int, str | None]:
    """``(warmup, note)``: the warm-up kept when it is shorter than the run; otherwise a tenth of the run (at
    least 1 step), with a note for the start line. A warm-up of 0 stays 0."""
    if warmup_steps <= 0 or warmup_steps < max_steps:
        return warmup_steps, None
    scaled = max(1, max_steps // 10)
    return scaled, (f"trainer.warmup_steps={warmup_steps} is not shorter than the run's {max_steps} steps: "
                    f"warm-up scaled to {scaled} (a tenth of the run), so the learning rate still decays; "
                    "set trainer.warmup_steps below trainer.max_steps to choose it")
