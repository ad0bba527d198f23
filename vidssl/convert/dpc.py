"""Import a DPC checkpoint (TengdaHan/DPC, `dpc/main.py`) as a vidssl `DPC` checkpoint.

The official file is ``{"epoch", "net", "state_dict", "best_acc", "optimizer", "iteration"}``; its state dict
was saved through ``nn.DataParallel`` (every key starts with ``module.``) and holds ``backbone.*`` (the
R2D3D, named as vidssl's), ``agg.*`` (the ConvGRU, one convolution per gate, every cell listed twice:
``ConvGRUCell_00`` and ``cell_list.0`` are the same module) and ``network_pred.*`` (φ). ``best_acc`` is a
NumPy float, hence the NumPy entries of ``SAFE_GLOBALS``.

The checkpoint holds no clip layout, so the converted config is the paper's (8 blocks, pred_step 3) and
``task=dpc_paper``'s training options; change ``num_seq``/``pred_step`` in the config if the run used others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

# What the official trainer pickles beside tensors: `best_acc` is a numpy.float64, named as NumPy 1.x
# (the published files) or 2.x (a file written today) wrote it.
SAFE_GLOBALS: list = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
]

R2D3D_DEPTHS = {(2, 2, 2, 2): "r2d3d_18", (3, 4, 6, 3): "r2d3d_34"}


def official_state_dict(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights of an official checkpoint (or of a bare state dict), without ``module.``."""
    weights = state.get("state_dict", state)
    if not isinstance(weights, Mapping) or not weights:
        raise KeyError("the official checkpoint has no 'state_dict' of tensors")
    return {key.removeprefix("module."): value for key, value in weights.items()}


def encoder_config(weights: Mapping[str, Tensor], prefix: str = "backbone.") -> dict[str, Any]:
    """The vidssl R2D3D config of the official backbone: depth from its blocks, width from conv1, and
    running statistics iff the file holds them."""
    blocks = [0, 0, 0, 0]
    for key in weights:
        match = re.match(rf"{re.escape(prefix)}layer(\d)\.(\d+)\.conv1\.weight$", key)
        if match:
            stage, index = int(match[1]) - 1, int(match[2])
            blocks[stage] = max(blocks[stage], index + 1)
    name = R2D3D_DEPTHS.get(tuple(blocks))
    if name is None or f"{prefix}layer1.0.conv3.weight" in weights:
        raise ValueError(f"the official backbone has {blocks} basic blocks per stage; only R2D3D-18 "
                         f"{(2, 2, 2, 2)} and R2D3D-34 {(3, 4, 6, 3)} (resnet18/resnet34) convert")
    return {
        "_target_": f"vidssl.encoders.video.{name}",
        "base_width": int(weights[f"{prefix}conv1.weight"].shape[0]),
        "track_running_stats": f"{prefix}bn1.running_mean" in weights,
    }


def convert_convgru(weights: Mapping[str, Tensor], official: str, ours: str) -> dict[str, Tensor]:
    """Official ConvGRU ``official.cell_list.L.{reset,update,out}_gate`` → vidssl ``ours.cells.L.{gates,
    candidate}`` (vidssl computes the reset and update gates with one convolution: reset first)."""
    out = {}
    layers = sorted({int(m[1]) for k in weights if (m := re.match(rf"{re.escape(official)}\.cell_list\.(\d+)\.", k))})
    if not layers:
        raise KeyError(f"the official checkpoint has no ConvGRU '{official}.cell_list.*'")
    for layer in layers:
        src = f"{official}.cell_list.{layer}"
        for kind in ("weight", "bias"):
            out[f"{ours}.cells.{layer}.gates.{kind}"] = torch.cat(
                [weights[f"{src}.reset_gate.{kind}"], weights[f"{src}.update_gate.{kind}"]], dim=0
            )
            out[f"{ours}.cells.{layer}.candidate.{kind}"] = weights[f"{src}.out_gate.{kind}"]
    return out


def rename(weights: Mapping[str, Tensor], official: str, ours: str) -> dict[str, Tensor]:
    """Every ``official.*`` tensor as ``ours.*``."""
    return {ours + key[len(official):]: value for key, value in weights.items() if key.startswith(official + ".")}


def check_all_used(weights: Mapping[str, Tensor], used_prefixes: tuple[str, ...]) -> None:
    """Refuse a file holding parts the conversion would silently drop (another model class)."""
    left = [k for k in weights if not k.startswith(used_prefixes) and ".ConvGRUCell_" not in k]
    if left:
        raise ValueError(f"the official checkpoint holds tensors this converter does not map: {left[:5]}")


def convert(state: dict[str, Any]) -> dict[str, Any]:
    """Official DPC_RNN checkpoint → ``{"encoder", "model", "config"}`` of vidssl's `DPC`."""
    weights = official_state_dict(state)
    if "network_pred.0.weight" not in weights:
        raise KeyError("not a DPC pretraining checkpoint: no 'network_pred' (a fine-tuned LC model?)")
    check_all_used(weights, ("backbone.", "agg.", "network_pred."))
    encoder = rename(weights, "backbone", "encoder")
    model = {
        **encoder,
        **convert_convgru(weights, "agg", "aggregator"),
        **rename(weights, "network_pred", "predictor"),
        "pred_step": torch.tensor(3),
    }
    return vidssl_checkpoint(weights, model, "agg", {"_target_": "vidssl.tasks.dpc.DPC", "head_init_gain": 1.0})


def vidssl_checkpoint(weights: Mapping[str, Tensor], model: dict[str, Tensor], gru: str,
                      task: dict[str, Any]) -> dict[str, Any]:
    """The converted checkpoint: the encoder's part of `model`, and the configs of the encoder and of the paper
    preset's task (`task` adds to the settings DPC and MemDPC share; the ConvGRU's depth and kernel are read
    from the official `gru` weights)."""
    task = {
        "num_seq": 8,
        "pred_step": 3,
        "num_layers": len({k.split(".")[2] for k in weights if k.startswith(f"{gru}.cell_list.")}),
        "kernel_size": int(weights[f"{gru}.cell_list.0.out_gate.weight"].shape[-1]),
        "hidden_dropout": 0.1,
        "head_init": "orthogonal",
        "temperature": 1.0,
        "normalize": False,
        **task,
    }
    return {
        "encoder": {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")},
        "model": model,
        "config": {"encoder": encoder_config(weights), "task": {"model": task}},
    }
