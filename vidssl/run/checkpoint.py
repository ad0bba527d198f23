"""`Checkpoint`: one trained run's weights, the config that rebuilds them, and what they export for evaluation.

The file is a dict of plain tensors and Python values, so it loads with ``torch.load(path, weights_only=True)``
(a checkpoint from a stranger cannot run code)::

    {"format_version": 2,
     "model":   the task's state dict,            "encoder": the backbone's state dict,
     "config":  the resolved run config (plain dict: "encoder" and "task" rebuild the modules),
     "exports": {"feature_layer", "readout", "capabilities"}: what evaluation may read (`Exports`),
     ...training: "optimizer", "scheduler", "scaler", "step", "rng", "sampler", "best", "smoothed_loss"}

A file without ``format_version`` is version 1: the same without ``exports``, which are then asked of the
task class named in its config. Every writer (the trainer, `vidssl.convert`) and reader (evaluation,
pseudo-labelling, the tools, the benchmarks) goes through this class; nothing else digs in the dict.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vidssl.files import atomic_write_bytes
from vidssl.run.rundir import RunDir

FORMAT_VERSION = 2
RANDOM = "random"
RANDOM_INIT_SEED = 0  # the fixed seed of `checkpoint=random` baselines, so every run compares the same net
PARTS = ("model", "encoder")
# The keys of the resume state (see `vidssl.train`); kept as they are, read by the trainer only.
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "step", "rng", "sampler", "best", "smoothed_loss")
# The sections of the run config that define the model: a resumed run must not change them.
MODEL_SECTIONS = ("encoder", "task.model")
CONTEXT = "context"


def _plain(config: Any) -> Any:
    """A Hydra/OmegaConf config as plain dicts and lists (other values as they are)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return config


def _find(config: Mapping[str, Any] | None, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(config, Mapping) or key not in config:
            return None
        config = config[key]
    return config


@dataclass(frozen=True)
class Exports:
    """What a trained task offers evaluation, written at save time by the task's ``evaluation_exports`` hook.

    feature_layer: the encoder submodule whose map dense evaluation reads ("output": the encoder's own);
        None leaves the choice to the encoder (`vidssl.eval.features.default_layer`).
    readout: ``{"kind": "context", "aggregators": [submodule names], "kernel_size", "num_layers"}`` for a
        task whose ConvGRU context the DPC/MemDPC protocol reads; None when it has none.
    capabilities: further things it can do ("cluster_heads": pseudo-labels from its own heads).
    """

    feature_layer: str | None = None
    readout: dict[str, Any] | None = None
    capabilities: tuple[str, ...] = ()

    @classmethod
    def of_task(cls, task: type | nn.Module, model_config: Mapping[str, Any] | None) -> Exports:
        """Ask a task (class or instance) what it exports given its model config; a task without the hook
        exports nothing beyond its encoder."""
        hook = getattr(task, "evaluation_exports", None)
        if hook is None:
            return cls()
        return cls.from_dict(hook(dict(model_config or {})))

    @classmethod
    def of_run(cls, task: nn.Module, run_config: Mapping[str, Any] | None) -> Exports:
        """`of_task` with the model config found in a run's config (``task.model``)."""
        return cls.of_task(task, _find(run_config, "task.model"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Exports:
        data = dict(data or {})
        unknown = set(data) - {"feature_layer", "readout", "capabilities"}
        if unknown:
            raise ValueError(f"unknown evaluation exports {sorted(unknown)}")
        return cls(feature_layer=data.get("feature_layer"), readout=data.get("readout"),
                   capabilities=tuple(data.get("capabilities", ())))

    def to_dict(self) -> dict[str, Any]:
        return {"feature_layer": self.feature_layer, "readout": self.readout, "capabilities": list(self.capabilities)}


def _exports_from_config(config: Mapping[str, Any]) -> Exports:
    """A version-1 checkpoint's exports: asked of the task class its config names (none if it names none)."""
    task = _find(config, "task.model")
    target = task.get("_target_") if isinstance(task, Mapping) else None
    if not target:
        return Exports()
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception:  # a task class this vidssl does not have: it exports its encoder only
        return Exports()
    return Exports.of_task(cls, task)


@dataclass
class Checkpoint:
    """A trained (or random-init) run, loaded once; it rebuilds its encoder and its task.

    Build one with `Checkpoint.load(path)` (a ``.pt`` file or a run directory), `Checkpoint.random(...)`
    (the fixed-seed random-init twin every evaluation prints beside a trained model), or `Checkpoint.open`
    (either, from a command-line value). ``defaults`` are config sections (``"encoder"``, ``"task"``) used
    where the file has none (and the whole config of a random twin).
    """

    config: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Tensor] | None = None
    encoder: dict[str, Tensor] | None = None
    exports: Exports = field(default_factory=Exports)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    source: str = "<memory>"  # where it came from, for messages: a path, or "random"
    defaults: dict[str, Any] = field(default_factory=dict)

    # ----- reading and writing -----

    @classmethod
    def load(cls, path: str | Path, *, encoder: Any = None, task: Any = None) -> Checkpoint:
        """Load a checkpoint file (CPU, ``weights_only=True``); a directory means its ``checkpoints/last.pt``."""
        path = Path(path)
        if path.is_dir():
            path = RunDir(path).last
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types; name the file in all of them
            raise RuntimeError(f"cannot load checkpoint {path}: {err}") from err
        return cls.from_dict(state, source=str(path), defaults={"encoder": encoder, "task": task})

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], *, source: str = "<memory>",
                  defaults: Mapping[str, Any] | None = None) -> Checkpoint:
        """The checkpoint held by ``state`` (a loaded file); a state without ``format_version`` is version 1."""
        if not isinstance(state, Mapping):
            raise ValueError(f"{source}: not a vidssl checkpoint (a {type(state).__name__}, not a dict)")
        version = int(state.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(f"{source}: checkpoint format {version} is newer than this vidssl reads "
                             f"({FORMAT_VERSION}); update vidssl")
        config = dict(state.get("config") or {})
        # Version 1 had no exports: ask the task class its config names (as a writer without them does).
        exports = Exports.from_dict(state["exports"]) if "exports" in state else _exports_from_config(config)
        return cls(config=config, model=state.get("model"), encoder=state.get("encoder"), exports=exports,
                   training={k: state[k] for k in TRAINING_KEYS if k in state}, format_version=version,
                   source=source, defaults={k: _plain(v) for k, v in (defaults or {}).items() if v is not None})

    @classmethod
    def of_task(cls, task: nn.Module, config: Mapping[str, Any] | None = None, *,
                source: str = "<memory>") -> Checkpoint:
        """A trained task in memory as a checkpoint: its weights, its encoder's, and what it exports given
        ``config`` (the run config, or just the task's model config: a dict without "task")."""
        config = dict(_plain(config) or {})
        model_config = _find(config, "task.model") if "task" in config else config
        run_config = config if "task" in config else {"task": {"model": config}}
        return cls(config=run_config, model=task.state_dict(), encoder=task.encoder.state_dict(),
                   exports=Exports.of_task(task, model_config), source=source)

    @classmethod
    def random(cls, *, encoder: Any = None, task: Any = None) -> Checkpoint:
        """The random-init twin: no weights; `build_encoder`/`build_task` build the ``encoder``/``task``
        configs at the fixed seed ``RANDOM_INIT_SEED``."""
        task = _plain(task)
        config = {"encoder": _plain(encoder), "task": task}
        return cls(config={k: v for k, v in config.items() if v is not None}, source=RANDOM,
                   exports=Exports.of_task(_task_class(task), (task or {}).get("model")) if task else Exports())

    @classmethod
    def open(cls, spec: str | Path | Checkpoint, *, encoder: Any = None, task: Any = None) -> Checkpoint:
        """``spec`` as the tools take it: ``"random"`` (the random twin of ``encoder``/``task``),
        ``"random:PATH"`` (the random twin of that checkpoint's own encoder and task: a like-for-like baseline),
        a path, or a `Checkpoint` already loaded. ``encoder``/``task`` fill in what a file lacks."""
        if isinstance(spec, Checkpoint):
            return spec
        if str(spec) == RANDOM:
            return cls.random(encoder=encoder, task=task)
        if str(spec).startswith(RANDOM + ":"):
            trained = cls.load(str(spec)[len(RANDOM) + 1:], encoder=encoder, task=task)
            return cls.random(encoder=trained.encoder_config, task=trained.config.get("task") or task)
        return cls.load(spec, encoder=encoder, task=task)

    def to_dict(self) -> dict[str, Any]:
        """The file's contents (format ``FORMAT_VERSION``)."""
        state: dict[str, Any] = {"format_version": FORMAT_VERSION}
        state.update({k: v for k, v in (("model", self.model), ("encoder", self.encoder)) if v is not None})
        state.update(self.training)
        state["config"] = self.config
        state["exports"] = self.exports.to_dict()
        return state

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (a crash leaves the old file or the new one)."""
        atomic_write_bytes(Path(path), serialize(self.to_dict()))
        return Path(path)

    # ----- what it holds -----

    @property
    def is_random(self) -> bool:
        return self.source == RANDOM

    @property
    def encoder_config(self) -> dict[str, Any] | None:
        """The encoder's Hydra config (``_target_`` + arguments): the file's, else the given default."""
        return self.config.get("encoder") or self.defaults.get("encoder")

    @property
    def task_config(self) -> dict[str, Any] | None:
        """The task's model config (``task.model``); a file without one gives None (never the default)."""
        task = _find(self.config, "task.model")
        return dict(task) if isinstance(task, Mapping) else None

    @property
    def data_config(self) -> dict[str, Any] | None:
        """How the task cut its clips (``task.data``): the file's, else the given default task's."""
        data = _find(self.config, "task.data")
        if data is None:
            data = _find(self.defaults, "task.data")
        return dict(data) if isinstance(data, Mapping) else None

    @property
    def dataset_config(self) -> dict[str, Any] | None:
        dataset = self.config.get("dataset")
        return dict(dataset) if isinstance(dataset, Mapping) else None

    @property
    def step(self) -> int | None:
        return self.training.get("step")

    @property
    def trained_without_running_stats(self) -> bool:
        """Whether the encoder was trained with batch statistics only (DPC's batch norm)."""
        return (self.encoder_config or {}).get("track_running_stats", True) is False

    # ----- building -----

    def build_encoder(self, *, running_stats: bool = False) -> nn.Module:
        """The encoder it was trained with, carrying its weights (CPU, train mode); for the random twin the
        encoder at the fixed-seed random initialisation.

        ``running_stats=True`` rebuilds an encoder trained without batch-norm running statistics (DPC) with
        them, as the DPC/MemDPC downstream model does; its fresh statistics are the only weights not loaded.
        """
        from hydra.utils import instantiate  # hydra is needed only to build

        cfg = self.encoder_config
        if cfg is None:
            raise ValueError(f"{self.source}: no encoder config (the checkpoint has no config['encoder'] and "
                             "none was given: encoder=NAME)")
        if self.is_random:
            if running_stats and "track_running_stats" in cfg:
                cfg = {**cfg, "track_running_stats": True}
            with torch.random.fork_rng(devices=[]):  # the fixed seed must not disturb the caller's stream
                torch.manual_seed(RANDOM_INIT_SEED)
                return instantiate(cfg)
        if self.encoder is None:
            raise KeyError(f"{self.source}: the checkpoint has no 'encoder' weights")
        if running_stats and self.trained_without_running_stats:
            encoder = instantiate({**cfg, "track_running_stats": True})
            missing, unexpected = encoder.load_state_dict(self.encoder, strict=False)
            wrong = unexpected + [k for k in missing
                                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
            if wrong:
                raise RuntimeError(f"{self.source}: encoder weights do not fit {cfg}: {wrong[:5]}")
            return encoder
        encoder = instantiate(cfg)
        try:
            encoder.load_state_dict(self.encoder)
        except RuntimeError as err:
            raise RuntimeError(f"{self.source}: encoder weights do not fit the encoder config {cfg}: {err}") from err
        return encoder

    def build_task(self) -> nn.Module:
        """The task it was trained with, carrying its weights (CPU, eval mode); for the random twin the task
        config's task at the fixed-seed random initialisation."""
        from hydra.utils import instantiate

        if self.is_random:
            model_cfg = _find(self.config, "task.model")
            if model_cfg is None:
                raise ValueError("checkpoint=random needs a task config (task=NAME) to build a task")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                return instantiate(model_cfg).eval()
        model_cfg = self.task_config
        if model_cfg is None:
            raise ValueError(f"{self.source}: the checkpoint has no config['task']['model'] to rebuild the task from")
        if self.model is None:
            raise KeyError(f"{self.source}: the checkpoint has no 'model' weights")
        task = instantiate(model_cfg)
        try:
            task.load_state_dict(self.model)
        except RuntimeError as err:
            raise RuntimeError(f"{self.source}: the saved weights do not fit the saved task config: {err}") from err
        return task.eval()

    def readout_states(self) -> list[dict[str, Tensor]]:
        """The state dicts of the ConvGRU(s) its context read-out runs (``exports.readout``), in order.

        Raises:
            KeyError: it exports no context read-out.
        """
        readout = self.exports.readout or {}
        if readout.get("kind") != CONTEXT or self.model is None:
            raise KeyError(f"{self.source}: readout=context needs a checkpoint of a task with a ConvGRU "
                           "'aggregator' (DPC, MemDPC)")
        states = []
        for name in readout["aggregators"]:
            states.append({k[len(name) + 1:]: v for k, v in self.model.items() if k.startswith(name + ".")})
        return states

    # ----- compatibility -----

    def model_config_changes(self, config: Mapping[str, Any] | None) -> list[str]:
        """Dotted keys under ``MODEL_SECTIONS`` whose values differ between this checkpoint's config and
        ``config`` (sorted); a section missing from either is not compared."""
        return model_config_changes(self.config, _plain(config))

    def refuse_model_change(self, config: Mapping[str, Any] | None) -> None:
        """Raise ``ValueError`` naming the dotted keys if ``config`` defines another model than this run's:
        weights of the same shapes would load into it without complaint."""
        changed = self.model_config_changes(config)
        if changed:
            raise ValueError(f"{self.source} was trained with a different model config ({', '.join(changed)}); "
                             "resume with the same task and encoder settings, or start a new trainer.out_dir")

    def load_into(self, module: nn.Module, part: str, *, strict: bool = True, config: Mapping[str, Any] | None = None,
                  name: str = "trainer.init_from") -> tuple[int, list[str]]:
        """Load its ``part`` weights ("model": the task; "encoder": the backbone) into ``module``.

        With ``config`` (the new run's), a "model" of another task class is refused. Keys that do not fit
        (missing, unexpected, of another shape) are named; ``strict`` refuses them, otherwise what fits is
        loaded. ``name`` is how messages call the checkpoint (the option that gave it).
        Outputs: (tensors loaded, the problems: one line per kind, empty when everything fit).
        """
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        weights = self.model if part == "model" else self.encoder
        if weights is None:
            held = [p for p in PARTS if getattr(self, p) is not None]
            raise KeyError(f"{name}={self.source} has no {part!r} weights (it holds {held}); "
                           f"{'use trainer.init_part=encoder' if part == 'model' else 'is it a vidssl checkpoint?'}")
        saved_task = _find(self.config, "task.model._target_")
        run_task = _find(_plain(config), "task.model._target_")
        if part == "model" and saved_task and run_task and saved_task != run_task:
            raise ValueError(f"{name}={self.source} holds a {saved_task} task, this run trains {run_task}: use "
                             "trainer.init_part=encoder to take its backbone only")
        own = module.state_dict()
        missing = sorted(own.keys() - weights.keys())
        unexpected = sorted(weights.keys() - own.keys())
        shapes = sorted(f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own.keys() & weights.keys()
                        if weights[k].shape != own[k].shape)
        problems = [f"{kind} ({len(keys)}): {', '.join(keys)}" for kind, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch, checkpoint vs run", shapes))
                    if keys]
        if problems and strict:
            raise RuntimeError(f"{name}={self.source}: its {part} weights do not fit this run's "
                               f"{'task' if part == 'model' else 'encoder'}; " + "; ".join(problems)
                               + " (trainer.init_strict=false loads what fits)")
        fitting = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}
        module.load_state_dict(fitting, strict=False)
        return len(fitting), problems


def refuse_changed_model_config(out_dir: str | Path, config: Mapping[str, Any] | None) -> Checkpoint | None:
    """The run in ``out_dir`` to resume (its ``last.pt``, loaded once), after refusing a ``config`` that defines
    another model (`Checkpoint.refuse_model_change`); None when there is no run there yet."""
    last = RunDir(out_dir).last
    if not last.exists():
        return None
    checkpoint = Checkpoint.load(last)
    checkpoint.refuse_model_change(config)
    return checkpoint


def _task_class(task_config: Mapping[str, Any] | None) -> type | None:
    target = _find(task_config, "model._target_")
    if not target:
        return None
    from hydra.utils import get_class

    return get_class(target)


def model_config_changes(saved: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """Dotted keys under ``MODEL_SECTIONS`` whose values differ between two run configs (sorted).

    A section missing from either config (or a missing config) is not compared.
    """
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(node, Mapping):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in flat(child, f"{prefix}.{key}").items()}

    changes = []
    for section in MODEL_SECTIONS:
        before, after = _find(saved, section), _find(new, section)
        if before is None or after is None:
            continue
        old, now = flat(before, section), flat(after, section)
        changes += [k for k in old.keys() | now.keys() if old.get(k, "<absent>") != now.get(k, "<absent>")]
    return sorted(changes)


def serialize(state: Mapping[str, Any]) -> bytes:
    """``torch.save`` into memory, so one checkpoint can be written under several names."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def load_encoder(checkpoint: str | Path | Checkpoint, encoder_cfg: Any = None) -> nn.Module:
    """``Checkpoint.open(checkpoint, encoder=encoder_cfg).build_encoder()``: the encoder a checkpoint (a file,
    a run directory or ``"random"``) was trained with, carrying its weights; ``encoder_cfg`` builds the
    random twin and fills in for a file saved without a config."""
    return Checkpoint.open(checkpoint, encoder=encoder_cfg).build_encoder()
