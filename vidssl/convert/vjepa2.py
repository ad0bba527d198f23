"""Import a V-JEPA 2 checkpoint (facebookresearch/vjepa2): the V-JEPA checkpoint dict and names
(`vidssl.convert.vjepa`), whose predictor uses mask token 0 for every mask config."""

from __future__ import annotations

from typing import Any

from vidssl.convert import vjepa

SAFE_GLOBALS = vjepa.SAFE_GLOBALS


def convert(state: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Official V-JEPA 2 checkpoint → ``{"encoder" (the target encoder), "model", "config"}`` (see `vjepa.convert`)."""
    return vjepa.convert(state, version=2, **options)
