"""Speed and memory benchmarks; prints a table and writes the figures under ``out=``.

    python tools/benchmark.py suite=data|train|propagate|propagate_dino|sinkhorn|flow out=DIR [option=value ...]
    python -m vidssl.app.benchmark suite=... out=DIR ...     # the same, from any install

``out=`` is required (created if missing): ``DIR/benchmark_<suite>.json`` holds the figures, the machine and
the command, ``DIR/benchmark_<suite>.txt`` the table.

Each suite is ``vidssl.benchmarks.<suite>.run(**options) -> {"rows": [...], ...}``; any further
``key=value`` is passed to it (e.g. ``suite=train task=memdpc``, ``suite=sinkhorn n=50000``).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vidssl.eval.report import format_table

SUITES = ("data", "train", "propagate", "propagate_dino", "sinkhorn", "flow")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default ``sys.argv[1:]``), ``key=value`` each."""
    argv = sys.argv[1:] if argv is None else argv
    options = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    suite = options.pop("suite", None)
    usage = f"usage: python -m vidssl.app.benchmark suite={'|'.join(SUITES)} out=DIR [key=value ...]"
    if suite not in SUITES:
        raise SystemExit(usage)
    if options.get("out") in (None, ""):
        raise SystemExit(f"benchmark: out=DIR is required (the folder for the results)\n{usage}")
    out = Path(options.pop("out"))
    module = importlib.import_module(f"vidssl.benchmarks.{suite}")
    started = time.time()
    result = module.run(**options)
    result = {
        "suite": suite,
        "command": "python -m vidssl.app.benchmark " + " ".join(argv),
        "machine": machine(),
        "seconds": round(time.time() - started, 1),
        **result,
    }
    table = format_table(result["rows"])
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"benchmark_{suite}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"benchmark_{suite}.txt").write_text(table + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
