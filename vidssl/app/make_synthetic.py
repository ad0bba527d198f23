"""Write the synthetic audio-visual corpus.

    python tools/make_synthetic.py out=DIR [num_videos=N] [seed=S]

All logic lives in `vidssl.datasets.synthetic.make_synthetic`; this script prints progress and a summary.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vidssl.app.cli import explain_instantiation_errors  # noqa: E402
from vidssl.datasets.formats import davis, synthetic  # noqa: E402


def _progress(done: int, total: int, name: str) -> None:
    if done % 10 == 0 or done == total:
        print(f"[{done}/{total}] {name}", flush=True)


@hydra.main(config_path="../configs", config_name="make_synthetic", version_base="1.3")
@explain_instantiation_errors
def main(cfg: DictConfig) -> None:
    started = time.perf_counter()
    out = instantiate(cfg, progress=_progress)
    seconds = time.perf_counter() - started

    entries = synthetic(out)
    per_split = Counter(e.split for e in entries)
    classes = Counter(e.label for e in entries)
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {len(entries)} videos ({', '.join(f'{n} {s}' for s, n in sorted(per_split.items()))}) "
          f"of {len(classes)} classes to {out} in {seconds:.1f} s, {size_mb:.1f} MiB")
    for split in ("train", "val"):
        print(f"DAVIS {split}: {len(davis(out / 'davis', split=split))} sequences in {out / 'davis'}")


if __name__ == "__main__":
    main()
