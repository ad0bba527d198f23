"""Decode every file of a dataset, report the bad ones, and write a clean manifest.

    python tools/check_dataset.py dataset=NAME [dataset.root=DIR] out=CLEAN.csv [workers=N] [backend=av]
        [min_frames=N] [require_audio=true]

Rows naming files that do not exist are dropped and reported (for loaders with ``skip_missing``: csv,
kinetics, vggsound), as are unreadable files, files shorter than ``min_frames``, trimmed rows running past
the end of their file and, with ``require_audio=true``, files without sound. ``classes.csv`` (index,name)
is written beside the clean manifest. All logic lives in `vidssl.datasets.check.check_dataset`; this
script builds the entries and prints a summary.
"""

from __future__ import annotations

import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.configs import CONFIG_DIR
from vidssl.datasets.check import check_dataset
from vidssl.datasets.formats import MissingFilesError


@hydra.main(config_path=str(CONFIG_DIR), config_name="check_dataset", version_base="1.3")
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    missing: list[str] = []
    try:
        entries = instantiate(cfg.dataset)
    except Exception as err:  # Hydra wraps the loader's error
        cause = err if isinstance(err, MissingFilesError) else err.__cause__
        if not isinstance(cause, MissingFilesError) or "skip_missing" not in cfg.dataset:
            raise
        missing = cause.missing  # dropped and reported, as the unreadable files are
        entries = instantiate(cfg.dataset, skip_missing=True)
    started = time.perf_counter()
    report = check_dataset(cfg.dataset.root, entries, cfg.out, backend=cfg.backend, workers=cfg.workers,
                           min_frames=cfg.min_frames, require_audio=cfg.require_audio, missing=missing)
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
    unreadable = {r.path for r in bad}
    others = [d for d in report.dropped if d["path"] not in unreadable]
    for d in others[:20]:
        print(f"  DROPPED {d['path']}{' [' + d['segment'] + ']' if d['segment'] else ''}: {d['reason']}")
    if len(others) > 20:
        print(f"  ... and {len(others) - 20} more")
    print(f"wrote {len(report.clean)} entries to {report.manifest} ({len(report.dropped)} dropped); "
          f"report: {report.report}" + (f"; classes: {report.classes}" if report.classes else ""))
    if not report.clean:
        raise SystemExit(f"no readable video in {cfg.dataset.root}: see {report.report}")


def main() -> None:
    """The command line (``sys.argv``)."""
    run()


if __name__ == "__main__":
    main()
