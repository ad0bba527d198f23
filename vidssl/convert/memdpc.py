"""Import a MemDPC checkpoint (TengdaHan/MemDPC, `memdpc/main.py`) as a vidssl `MemDPC` checkpoint.

The official file is ``{"epoch", "state_dict", "best_acc", "optimizer", "iteration"}``, its state dict saved
from the bare model (no ``module.`` prefix, though one is accepted): ``backbone.*`` (R2D3D with running
statistics), ``agg_f.*`` / ``agg_b.*`` (forward and backward ConvGRUs), ``network_pred.*`` (the addresser)
and ``mb`` (the memory bank, slots × features).

The checkpoint holds no clip layout, so the converted config is the paper's (8 blocks, pred_step 3) and
``task=memdpc_paper``'s training options.
"""

from __future__ import annotations

from typing import Any

import torch

from vidssl.convert.dpc import (
    SAFE_GLOBALS,
    check_all_used,
    convert_convgru,
    official_state_dict,
    rename,
    vidssl_checkpoint,
)

__all__ = ["SAFE_GLOBALS", "convert"]


def convert(state: dict[str, Any]) -> dict[str, Any]:
    """Official MemDPC_BD checkpoint → ``{"encoder", "model", "config"}`` of vidssl's `MemDPC`."""
    weights = official_state_dict(state)
    if "mb" not in weights or "network_pred.2.weight" not in weights:
        raise KeyError("not a MemDPC pretraining checkpoint: no memory bank 'mb' or 'network_pred' "
                       "(a fine-tuned LC model?)")
    check_all_used(weights, ("backbone.", "agg_f.", "agg_b.", "network_pred.", "mb"))
    encoder = rename(weights, "backbone", "encoder")
    model = {
        **encoder,
        **convert_convgru(weights, "agg_f", "aggregator"),
        **convert_convgru(weights, "agg_b", "aggregator_backward"),
        **rename(weights, "network_pred", "addresser"),
        "memory": weights["mb"],
        "pred_step": torch.tensor(3),
    }
    task = {"_target_": "vidssl.tasks.memdpc.MemDPC", "memory_size": int(weights["mb"].shape[0]),
            "memory_temperature": 1.0, "bidirectional": True, "head_init_gain": 0.1}
    return vidssl_checkpoint(weights, model, "agg_f", task)
