"""Self-supervised pretraining: build the task, dataset and trainer from the config tree, then train.

    python tools/pretrain.py task=simclr dataset=synthetic dataset.root=DIR trainer.max_steps=N \
        trainer.out_dir=RUN [trainer.checkpoint_every=K]
    torchrun --nproc_per_node=2 tools/pretrain.py ...        # the same, distributed (DDP)
    python tools/pretrain.py -m hydra/launcher=slurm hydra.launcher.nodes=4 hydra.launcher.gpus_per_node=8 ...
                                                           # on SLURM through submitit, one task per GPU

With -m (a sweep, or a submitit launcher) setting N of the sweep trains in RUN/N (RUN = trainer.out_dir), so
a requeued job, and the same sweep rerun, resume from RUN/N/checkpoints/last.pt.

``out=RUN`` is the same as ``trainer.out_dir=RUN`` (the output key of the other tools).
Rerunning the same command with the same trainer.out_dir resumes from RUN/checkpoints/last.pt; a rerun
whose encoder or task.model config differs from the checkpoint's is refused first, naming the keys.
Every mandatory key is checked before Hydra starts, and everything is built (every config key checked)
before the first step runs. RUN/pretrain.log keeps the console's lines, each logged step (also with the
progress bar on) and the traceback of a failed run; RUN/scalars.{csv,txt} every logged scalar.

``python tools/pretrain.py`` (a checkout) and ``python -m vidssl.app.pretrain`` (any install) are the same command.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vidssl.app.cli import explain_instantiation_errors
from vidssl.app.errors import check_overrides, one_line_errors, remove_if_unused
from vidssl.app.threads import set_cpu_threads
from vidssl.configs import CONFIG_DIR

log = logging.getLogger("vidssl.pretrain")


def missing_mandatory_keys(overrides: list[str]) -> list[str] | None:
    """The ``???`` keys the config still has after these command-line overrides (None: not checkable here).

    Hydra resolves ``hydra.run.dir`` (``${trainer.out_dir}``) before ``main`` runs, so a missing
    ``trainer.out_dir`` would otherwise end in a long "error during Hydra's exception formatting".
    Command lines with Hydra flags (``--multirun``, ``-cn``...) are left to Hydra.
    """
    if any(arg.startswith("-") for arg in overrides):
        return None
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("pretrain", overrides=[o for o in overrides if not o.lstrip("+~").startswith("hydra.")])
    except Exception:  # a wrong key or group: Hydra itself reports it, in its words
        return None
    return sorted(OmegaConf.missing_keys(cfg))


def out_alias(argv: list[str]) -> list[str]:
    """``out=RUN`` (the other tools' output key) as ``trainer.out_dir=RUN``; refused beside it."""
    outs = [a for a in argv if a.startswith("out=")]
    if outs and any(a.startswith("trainer.out_dir=") for a in argv):
        raise SystemExit("error: give the run folder once: out=RUN or trainer.out_dir=RUN")
    return [f"trainer.out_dir={a[4:]}" if a.startswith("out=") else a for a in argv]


def _log_failure_to_file() -> None:
    """The traceback of the exception being handled, into the run's log file only (Hydra prints it on the console)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed", None, sys.exc_info())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class _NotOnConsole(logging.Filter):
    """Keeps the per-step lines off the console while the progress bar shows them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "vidssl.train.trainer.steps"


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pretrain")
@one_line_errors(log_traceback=False)  # run() logs it to RUN/pretrain.log itself
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Exception:
        _log_failure_to_file()
        raise


def _sweep_job_folder(cfg: DictConfig) -> None:
    """Under -m, train in this job's own folder (hydra.sweep.dir/subdir: RUN/N) instead of the sweep's RUN."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        with open_dict(cfg):
            cfg.trainer.out_dir = HydraConfig.get().runtime.output_dir


def train(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"missing mandatory values: {', '.join(missing)} (set them, e.g. {missing[0]}=...)")
    if cfg.trainer.progress:
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.addFilter(_NotOnConsole())
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.run import refuse_changed_model_config
    from vidssl.train import seed_everything

    _sweep_job_folder(cfg)
    threads = set_cpu_threads(requested=cfg.get("threads"),
                              device=cfg.trainer.device)
    log.info(threads.describe())
    from vidssl.train.warmup import fit_warmup

    cfg.trainer.warmup_steps, note = fit_warmup(cfg.trainer.warmup_steps, cfg.trainer.max_steps)
    if note:
        log.warning(note)  # the saved config.yaml records the warm-up used
    config = OmegaConf.to_container(cfg, resolve=True)
    # A run resumed with another model config would load its weights into a different model: refused
    # before anything is built. The loaded last.pt goes to the trainer, so the file is read once.
    resume = refuse_changed_model_config(cfg.trainer.out_dir, config)
    # Cheap and most often mistyped first: trainer arguments, then the dataset listing, then the model.
    trainer = instantiate(cfg.trainer)
    optimizer_factory = instantiate(cfg.optim)
    dataset = VideoDataset(
        root=cfg.dataset.root,
        entries=instantiate(cfg.dataset),
        # _convert_="all": plain dicts/lists, so OmegaConf never tries to wrap the built dataclass objects.
        **instantiate(cfg.task.data, _convert_="all"),
        backend=cfg.loader.backend,
        decode_threads=cfg.loader.decode_threads,
        index=cfg.loader.index,
        require_audio=cfg.loader.require_audio,
        seed=cfg.trainer.seed,
    )
    from vidssl.datasets.clip_fit import check_clips_fit

    check_clips_fit(cfg.dataset.root, [e.path for e in dataset.entries], dataset.sampler)
    if getattr(dataset, "audio", None) is not None and cfg.loader.require_audio:
        from vidssl.datasets.clip_fit import silent_warning

        if note := silent_warning(cfg.dataset.root, [e.path for e in dataset.entries]):
            log.warning(note)  # one line before the first step, rather than a warning per silent file
    # Seed right before building the model, so the initial weights depend only on trainer.seed.
    seed_everything(cfg.trainer.seed)
    task = instantiate(cfg.task.model)
    summary = trainer.fit(task, dataset, optimizer_factory, config=config, resume=resume)
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; rerun the same command to resume", file=sys.stderr)
        # a stopped run is not a finished one: 130 after Ctrl-C, 143 after SIGTERM (as the shell reports them)
        sys.exit(128 + (summary.get("signal") or 2))


def main() -> None:
    """The command line (``sys.argv``)."""
    sys.argv[1:] = out_alias(sys.argv[1:])
    check_overrides("pretrain", doc=__doc__)  # a wrong key: one line, before Hydra creates the run folder
    absent = missing_mandatory_keys(sys.argv[1:])
    if absent:
        sys.exit(f"missing mandatory value{'s' if len(absent) > 1 else ''}: {', '.join(absent)} "
                 f"(set {'them' if len(absent) > 1 else 'it'} on the command line, e.g. {absent[0]}=...)")
    # a start refused in one line (a SystemExit message) leaves no run folder behind, only a real run does
    planned = next((Path(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("trainer.out_dir=")), None)
    existed = planned is not None and planned.exists()
    try:
        run()
    except SystemExit as stop:
        if isinstance(stop.code, str):
            remove_if_unused(planned, existed)
        raise


if __name__ == "__main__":
    main()
