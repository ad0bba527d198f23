"""Writing evaluation results: ``metrics.json`` plus a readable table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vidssl.files import atomic_write_text


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars → Python numbers so json can write them."""
    if hasattr(value, "tolist"):
        return value.tolist()  # tensors and numpy values; a 0-d one becomes a Python number
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_metrics(out_dir: str | Path, metrics: Mapping[str, Any], table: str | None = None) -> Path:
    """Write ``out_dir/metrics.json`` (atomically) and, when given, ``out_dir/metrics.txt``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    atomic_write_text(path, json.dumps(_plain(dict(metrics)), indent=2, sort_keys=False) + "\n")
    if table is not None:
        (out / "metrics.txt").write_text(table + "\n")
    return path


def _cell(value: Any, precision: int) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{precision}f}"
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, precision: int = 3
) -> str:
    """A plain-text table: one line per row, columns right-aligned, floats to ``precision`` places."""
    if not rows:
        return "(no rows)"
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_cell(r.get(c, ""), precision) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
