"""Speed and memory benchmarks; prints a table and writes the figures as JSON.

    python tools/benchmark.py suite=data|train|propagate|sinkhorn|flow [out=FILE.json] [option=value ...]

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

SUITES = ("data", "train", "propagate", "sinkhorn", "flow")


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str]) -> None:
    options = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    suite = options.pop("suite", None)
    if suite not in SUITES:
        raise SystemExit(f"usage: python tools/benchmark.py suite={'|'.join(SUITES)} [out=FILE.json] [key=value ...]")
    out = Path(options.pop("out", f"benchmark_{suite}.json"))
    module = importlib.import_module(f"vidssl.benchmarks.{suite}")
    started = time.time()
    result = module.run(**options)
    result = {
        "suite": suite,
        "command": "python tools/benchmark.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "seconds": round(time.time() - started, 1),
        **result,
    }
    print(format_table(result["rows"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
