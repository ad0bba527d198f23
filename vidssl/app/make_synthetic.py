"""Write the synthetic audio-visual corpus.

    python tools/make_synthetic.py out=DIR [num_videos=N] [seed=S]

All logic lives in `vidssl.datasets.synthetic.make_synthetic`; this script prints progress and a summary.
"""

from __future__ import annotations

import time
from collections import Counter

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.configs import CONFIG_DIR
from vidssl.datasets.formats import davis, synthetic


def _progress(done: int, total: int, name: str) -> None:
    if done % 10 == 0 or done == total:
        print(f"[{done}/{total}] {name}", flush=True)


@hydra.main(config_path=str(CONFIG_DIR), config_name="make_synthetic", version_base="1.3")
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
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


def main() -> None:
    """The command line (``sys.argv``)."""
    run()


if __name__ == "__main__":
    main()
