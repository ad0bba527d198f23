"""What a tool used, said in its start line and recorded in metrics.json: source, encoder, width, layer, input."""

from __future__ import annotations

from typing import Any

from torch import nn


def encoder_facts(encoder: nn.Module | None, *, source: str, layer: str | None = None,
                  input_size: Any = None, padding: str | None = None) -> dict[str, Any]:
    """``{"feature_source", "encoder", "width", "padding", "layer", "input_size"}`` (None where it does not apply).

    ``width`` is the encoder's output channels; ``padding`` its padding mode when it has one (the frame ResNet).
    """
    inner = getattr(encoder, "frame_encoder", encoder)  # a frame encoder pooled over clips names its own kind
    return {"feature_source": source,
            "encoder": type(inner).__name__ if inner is not None else None,
            "width": getattr(inner, "out_channels", None),
            "padding": padding or getattr(inner, "padding_mode", None),
            "layer": layer,
            "input_size": input_size}


def describe(facts: dict[str, Any]) -> str:
    """One start-line fragment: ``features …, encoder ResNet18Dense (32 output channels, reflect padding), …``."""
    parts = [f"features {facts['feature_source']}"]
    if facts.get("encoder"):
        pad = f", {facts['padding']} padding" if facts.get("padding") else ""
        parts.append(f"encoder {facts['encoder']} ({facts['width']} output channels{pad})")
    if facts.get("layer"):
        parts.append(f"layer {facts['layer']}")
    if facts.get("input_size"):
        parts.append(f"input {facts['input_size']}")
    return ", ".join(parts)


def announce(label: str, encoder: nn.Module | None, **facts: Any) -> dict[str, Any]:
    """`encoder_facts` of ``encoder`` (``facts``: its keyword arguments), said in one start line
    ``label: features …`` before the work that follows; returns the facts, for metrics.json."""
    found = encoder_facts(encoder, **facts)
    print(f"{label}: {describe(found)}", flush=True)
    return found
