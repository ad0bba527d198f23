"""Extract optical flow between consecutive frames of every video of a dataset, for a flow stream.

    python tools/extract_flow.py dataset=NAME [dataset.root=DIR] out=FLOW [method=tvl1|dis] [bound=20] [workers=N]

Then train or evaluate on it with ``dataset.modality=flow dataset.flow_root=FLOW``. All logic lives in
`vidssl.datasets.extract_flow.extract_flow`; this script builds the entries and prints a summary.
"""

from __future__ import annotations

import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.configs import CONFIG_DIR
from vidssl.datasets.extract_flow import FlowOptions, extract_flow


@hydra.main(config_path=str(CONFIG_DIR), config_name="extract_flow", version_base="1.3")
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    if cfg.dataset.get("modality", "rgb") != "rgb":
        raise SystemExit("extract_flow reads the videos themselves: leave dataset.modality=rgb")
    entries = instantiate(cfg.dataset)
    started = time.perf_counter()
    options = FlowOptions(method=cfg.method, bound=cfg.bound, ext=cfg.ext, short_side=cfg.short_side,
                          dis_preset=cfg.dis_preset)
    report = extract_flow(cfg.dataset.root, entries, cfg.out, options, backend=cfg.backend, workers=cfg.workers)
    seconds = time.perf_counter() - started
    written = sum(r.frames for r in report.results if r.status == "done")
    print(f"{len(report.results)} videos under {cfg.dataset.root} in {seconds:.1f} s: {report.count('done')} "
          f"extracted ({written} flow images), {report.count('skipped')} already done, {len(report.bad)} bad")
    for result in report.bad[:20]:
        print(f"  BAD {result.path}: {result.error}")
    if len(report.bad) > 20:
        print(f"  ... and {len(report.bad) - 20} more")
    print(f"flow in {cfg.out}; bad-video report: {report.report}")
    if len(report.bad) == len(report.results):
        raise SystemExit(f"no video of {cfg.dataset.root} could be read: see {report.report}")


def main() -> None:
    """The command line (``sys.argv``)."""
    run()


if __name__ == "__main__":
    main()
