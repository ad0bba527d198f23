"""Which keys of a pretraining run's config define its model, and the refusal to resume with others.

Weights of the same shapes load into a different model (another padding, temperature, …) without
complaint, so `tools/pretrain.py` compares the run's config with the one stored in ``last.pt`` before it
builds anything. Only the model sections count: everything else (max_steps, out_dir, the data and its
augmentation, logging) may change between a run and its continuation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vidssl.checkpoint import load_checkpoint

# The sections of the config tree (configs/pretrain.yaml) that define the model.
MODEL_SECTIONS = ("encoder", "task.model")


def model_config_changes(saved: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Dotted keys under MODEL_SECTIONS whose values differ between two run configs (sorted).

    A section missing from either config (or a missing config) is not compared.
    """
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}.{key}").items()}

    def find(config: dict[str, Any] | None, path: str) -> Any:
        for key in path.split("."):
            if not isinstance(config, dict) or key not in config:
                return None
            config = config[key]
        return config

    changes = []
    for section in MODEL_SECTIONS:
        before, after = find(saved, section), find(new, section)
        if before is None or after is None:
            continue
        old, now = flat(before, section), flat(after, section)
        changes += [k for k in old.keys() | now.keys() if old.get(k, "<absent>") != now.get(k, "<absent>")]
    return sorted(changes)


def refuse_changed_model_config(out_dir: str | Path, config: dict[str, Any]) -> None:
    """Raise if ``out_dir`` holds a run (``checkpoints/last.pt``) whose model config differs from ``config``.

    Raises:
        ValueError: naming ``last.pt`` and the dotted keys that changed.
    """
    last = Path(out_dir) / "checkpoints" / "last.pt"
    if not last.exists():
        return
    changed = model_config_changes(load_checkpoint(last).get("config"), config)
    if changed:
        raise ValueError(f"{last} was trained with a different model config ({', '.join(changed)}); "
                         "resume with the same task and encoder settings, or start a new trainer.out_dir")
