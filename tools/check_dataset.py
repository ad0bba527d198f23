"""Decode every file of a dataset, report the bad ones, and write a clean manifest.

    python tools/check_dataset.py dataset=NAME [dataset.root=DIR] out=CLEAN.csv [workers=N] [backend=av]

All logic lives in `vidssl.datasets.check.check_dataset`; this script builds the entries and prints a summary.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vidssl.cli import explain_instantiation_errors  # noqa: E402
from vidssl.datasets.check import check_dataset  # noqa: E402


@hydra.main(config_path="../configs", config_name="check_dataset", version_base="1.3")
@explain_instantiation_errors
def main(cfg: DictConfig) -> None:
    entries = instantiate(cfg.dataset)
    started = time.perf_counter()
    report = check_dataset(cfg.dataset.root, entries, cfg.out, backend=cfg.backend, workers=cfg.workers)
    seconds = time.perf_counter() - started
    bad = report.bad
    print(f"checked {len(report.results)} files under {cfg.dataset.root} in {seconds:.1f} s: "
          f"{len(report.results) - len(bad)} good, {len(bad)} bad")
    for result in bad[:20]:
        print(f"  BAD {result.path}: {result.error}")
        for message in result.messages[:3]:
            print(f"      {message}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more")
    print(f"wrote {len(report.clean)} entries to {report.manifest}; bad-file report: {report.report}")
    if not report.clean:
        raise SystemExit(f"no readable video in {cfg.dataset.root}: see {report.report}")


if __name__ == "__main__":
    main()
