"""The main job on the embedded synthetic corpus (what `make demo` runs).

    python tools/demo.py [out=demo_out]

Steps and outputs are described in ``vidssl/app/demo.py``.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from vidssl.app.demo import run_demo

if __name__ == "__main__":
    options = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[1:]))
    unknown = set(options) - {"out"}
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}; usage: python tools/demo.py [out=DIR]")
    run_demo(options.get("out", "demo_out"))
