"""A run's report on demand: RUN/report.md and its PNG plots (loss and LR, health monitors, diagnostics,
evaluator metrics), from RUN/scalars.csv and the run's logs. The engine writes the same at the end of a run.

    python tools/report.py run=RUN
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from vidssl.run.report import write_report


def main() -> None:
    """The command line (``sys.argv``)."""
    options = OmegaConf.to_container(OmegaConf.from_dotlist(sys.argv[1:]))
    unknown = set(options) - {"run"}
    if unknown or "run" not in options:
        raise SystemExit(f"usage: python -m vidssl.app.report run=RUN (unknown options: {sorted(unknown)})"
                         if unknown else "missing run=RUN (a training run folder, the trainer.out_dir of a run)")
    try:
        report = write_report(str(options["run"]))
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None
    print(f"wrote {report.path}")
    for png in report.figures:
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
