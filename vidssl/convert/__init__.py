"""Import checkpoints written by the authors' code into vidssl's checkpoint format.

One module per source (``vidssl/convert/<source>.py``), each with

    SAFE_GLOBALS: list          # non-tensor classes its pickles hold, allowed while loading (may be empty)
    def convert(state: dict) -> dict   # the loaded official file -> {"encoder", "model", "config"}

The official file is read with ``torch.load(weights_only=True)``; the few classes an official checkpoint
pickles beside its tensors (videowalk stores its ``argparse.Namespace``) are allowed by name with
``torch.serialization.safe_globals``, so an untrusted file can never run code. The result is a plain
vidssl `Checkpoint` (``vidssl/run/checkpoint.py``; its exports asked of the task its config names) that
evaluation, ``propagate.py features=checkpoint`` and ``trainer.init_from`` read like any other.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from vidssl.run import Checkpoint

SOURCES = ("videowalk", "dpc", "memdpc", "selavi", "vjepa", "vjepa2")


def converter(source: str) -> Any:
    """The module that converts ``source`` checkpoints."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {', '.join(SOURCES)}")
    return importlib.import_module(f"vidssl.convert.{source}")


def load_official(path: str | Path, safe_globals: list | tuple = ()) -> dict[str, Any]:
    """Read an official checkpoint with ``weights_only=True``, allowing only ``safe_globals`` beside tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; name the file in all of them
        raise RuntimeError(f"cannot read {path} as a checkpoint with weights_only=True: {err}") from err


def convert_checkpoint(source: str, in_path: str | Path, out_path: str | Path, **options: Any) -> Checkpoint:
    """Convert the official ``source`` checkpoint at ``in_path`` and write it to ``out_path``; returns it.
    ``options`` go to the converter (vjepa: ``num_heads``, ``predictor_heads``)."""
    module = converter(source)
    state = module.convert(load_official(in_path, module.SAFE_GLOBALS), **options)
    missing = {"encoder", "model", "config"} - set(state)
    if missing:
        raise RuntimeError(f"converter {source!r} returned no {sorted(missing)}")
    checkpoint = Checkpoint.from_dict(state, source=str(out_path))  # no format_version: exports from the config
    checkpoint.save(out_path)
    return checkpoint
