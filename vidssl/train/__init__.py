"""The training core: `Trainer` (the loop) and its parts, each in its module: `step` (one optimiser step),
`state` (step, epoch, position, best, RNGs), `checkpointer` (``step_*/last/best.pt`` and the best rule),
`run_log` (scalars, bad files), `batch_sampler` (the resumable, rank-sharded batch order)."""

from vidssl.train.trainer import Trainer, TrainerConfig, cosine_schedule, param_groups, seed_everything

__all__ = ["Trainer", "TrainerConfig", "cosine_schedule", "param_groups", "seed_everything"]
