"""Write small tracking benchmarks in their official layouts (YouTube-VOS/MOSE, JHMDB, VIP) from the synthetic sprites.

    python tools/make_synthetic_benchmarks.py out=DIR [which=[ytvos,jhmdb,vip]] [seed=0]

Writes ``DIR/ytvos``, ``DIR/jhmdb`` and ``DIR/vip`` (`vidssl.datasets.synthetic_benchmarks`); then e.g.
``python tools/propagate.py benchmark=jhmdb root=DIR/jhmdb out=RES`` and
``python tools/evaluate.py metric=jhmdb root=DIR/jhmdb results=RES out=RES``.
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from vidssl.datasets.synthetic_benchmarks import BENCHMARKS, make_benchmarks


def main(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default ``sys.argv[1:]``), ``key=value`` each."""
    argv = sys.argv[1:] if argv is None else argv
    options = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    usage = (f"usage: python -m vidssl.app.make_synthetic_benchmarks out=DIR [which=[{','.join(BENCHMARKS)}]] "
             "[seed=0]")
    if options.get("out") in (None, ""):
        raise SystemExit(usage)
    unknown = sorted(set(options) - {"out", "which", "seed"})
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown}\n{usage}")
    which = options.get("which") or list(BENCHMARKS)
    which = [which] if isinstance(which, str) else which
    written = make_benchmarks(options["out"], which=tuple(which), seed=int(options.get("seed", 0)))
    for name, folder in written.items():
        print(f"{name}: {folder}")


if __name__ == "__main__":
    main()
