"""Checkpoints: atomic writes, rotation, RNG capture, and rebuilding an encoder from a checkpoint.

A checkpoint is a dict of plain tensors and Python values, so it loads with
``torch.load(path, weights_only=True)`` (a checkpoint from a stranger cannot run code)::

    {"model":     the task's state dict,          "encoder":   the backbone's state dict,
     "optimizer": optimizer.state_dict(),         "scheduler": the LR schedule's parameters,
     "scaler":    GradScaler.state_dict(),        "step":      optimiser steps done,
     "rng":       [rng_state() of each rank],     "sampler":   {"epoch": int, "position": samples done in it},
     "best":      {"metric": str, "value": float | None},  "smoothed_loss": float (EMA of the loss),
     "config":    the resolved run config (plain dict; its "encoder" entry rebuilds the backbone)}

A run directory holds ``RUN/checkpoints/{step_<step>.pt, last.pt, best.pt}`` and ``RUN/config.yaml``.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RANDOM = "random"
RANDOM_INIT_SEED = 0  # the fixed seed of `checkpoint=random` baselines, so every run compares the same net


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half.

    The temporary file lives in the same folder (``os.replace`` is atomic only within a filesystem) and
    is fsynced before the rename, and the folder after it, so the rename cannot outlive the data.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def serialize(state: dict[str, Any]) -> bytes:
    """``torch.save`` into memory, so one checkpoint can be written under several names."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def step_path(checkpoint_dir: Path, step: int) -> Path:
    return checkpoint_dir / f"step_{step:07d}.pt"


def prune_step_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest ``step_<step, 7 digits>.pt`` files."""
    steps = sorted(checkpoint_dir.glob("step_*.pt"))  # zero-padded names sort by step
    for old in steps[: max(0, len(steps) - keep_last)]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``; a directory means ``DIR/checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; name the file in all of them
        raise RuntimeError(f"cannot load checkpoint {path}: {err}") from err


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


def load_encoder(checkpoint: str | Path, encoder_cfg: Any = None) -> nn.Module:
    """The encoder a checkpoint was trained with, carrying its trained weights (CPU, train mode).

    Args:
        checkpoint: a checkpoint file, a run directory (its ``checkpoints/last.pt``), or ``"random"``.
        encoder_cfg: a Hydra config (``_target_`` + arguments) of the encoder. Required for ``"random"``,
            which builds it at random initialisation with a fixed seed (the baseline every evaluation
            prints beside a trained model). With a checkpoint the checkpoint's own ``config["encoder"]``
            is used, since its weights fit only that architecture; ``encoder_cfg`` is then the fallback
            for checkpoints saved without a config.
    """
    from hydra.utils import instantiate  # hydra is only needed here, not by every importer

    if str(checkpoint) == RANDOM:
        if encoder_cfg is None:
            raise ValueError("checkpoint=random needs an encoder config to know which encoder to build")
        # fork_rng: the fixed seed must not disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            return instantiate(encoder_cfg)
    state = load_checkpoint(checkpoint)
    cfg = (state.get("config") or {}).get("encoder", encoder_cfg)
    if cfg is None:
        raise ValueError(f"{checkpoint}: the checkpoint has no config['encoder'] and no encoder config was given")
    if "encoder" not in state:
        raise KeyError(f"{checkpoint}: the checkpoint has no 'encoder' weights")
    encoder = instantiate(cfg)
    try:
        encoder.load_state_dict(state["encoder"])
    except RuntimeError as err:
        raise RuntimeError(f"{checkpoint}: encoder weights do not fit the encoder config {cfg}: {err}") from err
    return encoder
