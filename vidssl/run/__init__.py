"""What a run leaves on disk: `RunDir` (the folder layout) and `Checkpoint` (typed, versioned, loaded once)."""

from vidssl.run.checkpoint import (
    FORMAT_VERSION,
    RANDOM,
    RANDOM_INIT_SEED,
    Checkpoint,
    Exports,
    load_encoder,
    model_config_changes,
    refuse_changed_model_config,
)
from vidssl.run.rundir import RunDir

__all__ = ["FORMAT_VERSION", "RANDOM", "RANDOM_INIT_SEED", "Checkpoint", "Exports", "RunDir", "load_encoder",
           "model_config_changes", "refuse_changed_model_config"]
