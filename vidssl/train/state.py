"""Where a training run is: the step, the epoch and the batches done in it, the best result, the RNGs."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vidssl import distributed


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, as tensors and plain Python values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state holds an ndarray, which weights_only loading refuses: keep it as a tensor.
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


class TrainState:
    """The progress of a run that is not held by the model, optimiser or scaler; saves and loads itself.

    Args:
        best_metric: what ``best`` is best at ("loss": the smoothed training loss, or an evaluator metric).
        samples_per_batch: samples one loader batch takes from the epoch (batch size × processes): the
            checkpoint counts the position in samples, so a resumed run can check its batch size.

    ``state_dict`` gathers every rank's RNG state, so every rank calls it; ``load_state_dict`` restores
    this rank's (a different number of processes reuses them cyclically).
    """

    def __init__(self, *, best_metric: str, samples_per_batch: int) -> None:
        self.step = 0  # optimiser steps done
        self.epoch = 0
        self.batch = 0  # loader batches of this epoch done
        self.best: dict[str, Any] = {"metric": best_metric, "value": None}
        self.smoothed_loss: float | None = None  # exponential moving average of the training loss
        self.samples_per_batch = samples_per_batch

    def observe_loss(self, loss: float) -> None:
        self.smoothed_loss = loss if self.smoothed_loss is None else 0.9 * self.smoothed_loss + 0.1 * loss

    def state_dict(self) -> dict[str, Any]:
        rngs = [rng_state()]
        if distributed.world_size() > 1:
            rngs = [None] * distributed.world_size()
            dist.all_gather_object(rngs, rng_state())
        return {"step": self.step, "rng": rngs,
                "sampler": {"epoch": self.epoch, "position": self.batch * self.samples_per_batch},
                "best": self.best, "smoothed_loss": self.smoothed_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``.

        Raises:
            ValueError: the saved position is not a whole number of this run's batches.
        """
        consumed = state["sampler"]["position"]  # samples of this epoch already trained on
        if consumed % self.samples_per_batch:
            raise ValueError(f"{consumed} samples into the epoch is not a whole number of batches of "
                             f"{self.samples_per_batch}; resume with the batch size and process count it was "
                             f"saved with")
        self.step, self.epoch, self.batch = state["step"], state["sampler"]["epoch"], consumed // self.samples_per_batch
        self.best = state["best"]
        self.smoothed_loss = state.get("smoothed_loss")
        set_rng_state(state["rng"][distributed.rank() % len(state["rng"])])
