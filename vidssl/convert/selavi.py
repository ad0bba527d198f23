"""SeLaVi checkpoints (facebookresearch/selavi ``main.py``) to vidssl's format.

``main.py`` saves ``{"epoch", "dist", "model", "optimizer", "selflabels"}`` with ``model`` the state of the
DDP-wrapped ``AVModel`` (keys ``module.…``): ``video_network.base`` a torchvision R(2+1)D-18 (its ``fc``
an identity), ``audio_network.base`` a torchvision ResNet-9 on 1-channel spectrograms, and per head and
modality ``mlp_v{h}`` / ``mlp_a{h}`` (``mlp_v`` / ``mlp_a`` with one head): an MLP (``MLPv2``: Dropout,
Linear no bias, BN, ReLU, Dropout, Linear) or a Linear. The result is a ``task=selavi`` checkpoint with
the same heads (``vidssl.tasks.selavi.heads.cluster_head``), the R(2+1)D-18 as the ``encoder`` and the
ResNet-9 as the ``audio_encoder``; ``selflabels`` (N×H) become the task's label table. A bare state dict
(no ``model`` key) is read as ``model``.

The ``data`` config written with it follows the official training clips (30 frames at stride 1, 112 px,
1 s of 24 kHz audio); its log-mel features are vidssl's ``LogMel`` at the official 257 bands, 20 ms
windows and 10 ms hops, not python_speech_features' ``logfbank`` the official code uses.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

SAFE_GLOBALS: list = []  # the file holds only tensors, numbers, None and dicts/lists of them

VIDEO, AUDIO = "video_network.base.", "audio_network.base."
# MLPv2.block_forward positions -> cluster_head positions (the Flatten/Unsqueeze layers hold no weights).
MLP_LAYERS = {"2": "1", "4": "2", "8": "5"}


def convert(state: dict[str, Any]) -> dict[str, Any]:
    weights = state.get("model", state)
    if not isinstance(weights, dict) or not weights:
        raise ValueError("selavi checkpoint: expected main.py's {'model': state_dict, ...} or a state dict")
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    encoder = {k[len(VIDEO):]: v for k, v in weights.items() if k.startswith(VIDEO) and not k.startswith(VIDEO + "fc.")}
    audio = {k[len(AUDIO):]: v for k, v in weights.items() if k.startswith(AUDIO) and not k.startswith(AUDIO + "fc.")}
    if not encoder or not audio:
        raise ValueError("selavi checkpoint: no video_network.base.* / audio_network.base.* weights; is this an "
                         f"AVModel state? first keys: {list(weights)[:5]}")
    heads, num_clusters, hidden = _heads(weights)
    model = {f"encoder.{k}": v for k, v in encoder.items()}
    model.update({f"audio_encoder.{k}": v for k, v in audio.items()})
    model.update(heads)
    labels = state.get("selflabels") if isinstance(state.get("selflabels"), Tensor) else None
    table = labels.long().reshape(len(labels), -1).T.contiguous().cpu() if labels is not None else None
    model["table._extra_state"] = {"labels": table if table is not None else
                                   torch.full((len(num_clusters), 0), -1, dtype=torch.long)}
    # The official schedule's progress is not carried over: a run continued from this starts its own.
    model["_extra_state"] = {"relabels_done": 0, "step": 0, "aligned": True, "last_label_changes": 0.0,
                             "last_sinkhorn_iterations": 0}
    encoder_cfg = {"_target_": "vidssl.encoders.video.r2plus1d_18"}
    task_cfg = {
        "model": {
            "_target_": "vidssl.tasks.selavi.SeLaVi", "encoder": encoder_cfg,
            "audio_encoder": {"_target_": "vidssl.encoders.audio.audio_resnet9"},
            "num_clusters": num_clusters, "head_hidden": hidden, "head_dropout": 0.3, "fusion": "split",
            "align_modalities": True, "epsilon": 0.05, "labels": "scheduled",
        },
        "data": {
            "sampler": {"_target_": "vidssl.datasets.sampling.ClipSampler", "num_frames": 30, "stride": 1},
            "transform": {"_target_": "vidssl.datasets.transforms.ClipTransform", "size": 112},
            "views": 1,
            "audio": {"_target_": "vidssl.datasets.transforms.LogMel", "sample_rate": 24000, "n_mels": 257,
                      "win_ms": 20.0, "hop_ms": 10.0},
            "audio_rate": 24000,
            "audio_seconds": 1.0,
        },
    }
    return {"encoder": encoder, "model": model, "config": {"encoder": encoder_cfg, "task": task_cfg}}


def _heads(weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[int], int]:
    """The heads' weights under vidssl's names, K per head, and the MLP width (0: linear heads)."""
    pattern = re.compile(r"^mlp_([va])(\d*)\.(.+)$")
    out: dict[str, Tensor] = {}
    found: dict[tuple[str, int], dict[str, Tensor]] = {}
    for key, value in weights.items():
        match = pattern.match(key)
        if match:
            modality, head, rest = match.groups()
            found.setdefault((modality, int(head or 0)), {})[rest] = value
    num_heads = 1 + max((h for _, h in found), default=-1)
    if num_heads == 0 or any((m, h) not in found for m in "va" for h in range(num_heads)):
        raise ValueError(f"selavi checkpoint: expected heads mlp_v{{h}} and mlp_a{{h}} for every head, found "
                         f"{sorted(found)}")
    hidden = 0
    num_clusters = []
    for (modality, head), params in sorted(found.items()):
        stream = "video" if modality == "v" else "audio"
        for rest, value in params.items():
            if rest.startswith("block_forward."):
                _, position, name = rest.split(".", 2)
                if position not in MLP_LAYERS:
                    raise ValueError(f"selavi checkpoint: unexpected head weight mlp_{modality}{head}.{rest}")
                out[f"heads.{stream}.{head}.{MLP_LAYERS[position]}.{name}"] = value
                if position == "2":
                    hidden = value.shape[0]
            else:
                out[f"heads.{stream}.{head}.0.{rest}"] = value
        if modality == "v":
            last = params.get("block_forward.8.bias", params.get("bias"))
            num_clusters.append(int(last.shape[0]))
    return out, num_clusters, hidden
