"""A user mistake in one line: ``error: …`` naming the key or file, "did you mean …?" for a near-miss key.

Hydra prints 10–20 lines of traceback around a message, and answers a misspelled key with its ``+key=``
hint. Two guards keep the console to the point:

- `check_overrides` composes the tool's config from the command line before Hydra starts (so before any
  output folder exists) and turns a key or group that does not exist into one line with the closest names;
- `one_line_errors` (below ``@hydra.main``) prints an exception raised by the tool as one line; the traceback
  goes to the run's log file where the tool has one, and to the console with ``HYDRA_FULL_ERROR=1``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vidssl.configs import CONFIG_DIR

T = TypeVar("T")


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a (plain, unresolved) config container."""
    keys = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            keys.append(path)
            keys += config_keys(value, path + ".")
    return keys


def _group_options(group: str) -> list[str]:
    folder = CONFIG_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def suggest(wrong: str, candidates: list[str], n: int = 3) -> str:
    """`` (did you mean a, b?)`` for the closest names by difflib, or ``""``."""
    close = difflib.get_close_matches(wrong, candidates, n=n, cutoff=0.75)
    if not close:  # a right leaf under the wrong parent: trainer.max_step → trainer.max_steps, max_steps
        leaf = wrong.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] in difflib.get_close_matches(
            leaf, [k.rsplit(".", 1)[-1] for k in candidates], n=n, cutoff=0.75)][:n]
    return f" (did you mean {', '.join(close)}?)" if close else ""


def describe_override_error(config_name: str, overrides: list[str], err: Exception) -> str:
    """One line for a command line Hydra cannot compose: the wrong key or group option and the closest names."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    text = str(err)
    group = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if group:
        name, option = group.groups()
        return (f"error: {name}={option}: no vidssl/configs/{name}/{option}.yaml"
                f"{suggest(option, _group_options(name))}")
    key = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text)
    if key:
        wrong = key.group(1)
        others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != wrong]
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name, overrides=others)
            known = config_keys(OmegaConf.to_container(cfg, resolve=False))
        except Exception:  # another wrong override too: suggest from the tool's defaults
            known = []
        return f"error: {wrong}: no such key in {config_name}.yaml{suggest(wrong, known)}"
    return "error: " + " ".join(text.split())


def config_help(config_name: str) -> str:
    """``--help``: each key of ``vidssl/configs/<config_name>.yaml`` with its one-line comment, then the groups the
    tool uses with their options (the YAML comments are the documentation; Hydra's own help drops them)."""
    lines = (CONFIG_DIR / f"{config_name}.yaml").read_text().splitlines()
    keys, groups, sub_keys, section = [], [], [], None
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if not line.startswith((" ", "-", "\t")):
            section = line.split(":", 1)[0].strip()
        if section == "hydra" or section == "defaults" and not line.strip().startswith("- "):
            continue
        if section == "defaults":
            entry, _, note = line.strip()[2:].partition("#")
            group = entry.split(":", 1)[0].strip()
            if ":" in entry and not group.startswith("override") and group != "_self_":
                options = ", ".join(_group_options(group.split("@")[0])) or "-"
                groups.append(f"  {group}=…  ({options}){'  # ' + note.strip() if note.strip() else ''}")
                chosen = CONFIG_DIR / group / f"{entry.split(':', 1)[1].strip()}.yaml"
                if group in ("trainer", "optim") and chosen.is_file():  # few options: their keys are the tool's
                    sub_keys += [f"  {group}.{ln}" for ln in chosen.read_text().splitlines()
                                 if ln.strip() and not ln.startswith((" ", "#", "_"))]
            continue
        keys.append(f"  {line}")
    keys += sub_keys
    return "\n".join([f"keys of vidssl/configs/{config_name}.yaml (key=value on the command line):", *keys, "",
                      "groups (group=option):", *groups, "",
                      "Hydra's own flags: --hydra-help; the composed config: --cfg job"])


def check_overrides(config_name: str, argv: list[str] | None = None, doc: str | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides; exit with one line (status 2) if Hydra cannot.

    ``--help`` prints ``doc`` (the tool module's docstring; default ``__main__``'s) and `config_help`. Command
    lines with Hydra's other flags (``--multirun``, ``-cn``…) are left to Hydra.
    """
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        doc = (sys.modules["__main__"].__doc__ if doc is None else doc) or ""
        print(doc.strip() + "\n\n" + config_help(config_name))
        sys.exit(0)
    if any(arg.startswith("-") for arg in argv) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from hydra import compose, initialize_config_dir

    overrides = [o for o in argv if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except Exception as err:  # a wrong key, group option or syntax: said in one line
        print(describe_override_error(config_name, overrides, err), file=sys.stderr)
        sys.exit(2)


def remove_if_unused(folder: Path | None, existed: bool) -> None:
    """Delete a run folder this command created when it holds nothing but log files (a refused start)."""
    if folder is None or existed or not folder.is_dir():
        return
    files = list(folder.rglob("*"))
    if all(p.is_file() and p.suffix == ".log" for p in files):
        for p in files:
            p.unlink()
        folder.rmdir()


def _message(err: BaseException) -> str:
    """The exception's own words on one line (Hydra's wrapper keeps its "caused by …"), its type named
    unless it is a plain value or file error."""
    text = " ".join(str(err).split()) or type(err).__name__
    plain = (ValueError, FileNotFoundError, KeyError)
    return text if isinstance(err, plain) or "caused by" in text else f"{type(err).__name__}: {text}"


def one_line_errors(main: Callable[..., T] | None = None, *, log_traceback: bool = True) -> Any:
    """Decorate a Hydra ``main`` (below ``@hydra.main``): an exception prints ``error: <cause>`` on one line and
    exits 1; a ``SystemExit`` message gets the ``error:`` prefix; Ctrl-C exits 130. The traceback goes to the
    log files of the root logger (a run's log; ``log_traceback=False`` where the tool writes it itself) and, with
    ``HYDRA_FULL_ERROR=1``, to the console as before."""
    if main is None:
        return functools.partial(one_line_errors, log_traceback=log_traceback)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except SystemExit as stop:
            if isinstance(stop.code, str) and not stop.code.startswith("error:"):
                raise SystemExit(f"error: {stop.code}") from None
            raise
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log = logging.getLogger("vidssl")
            record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed", None, sys.exc_info())
            files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
            for handler in files if log_traceback else []:
                handler.handle(record)
            where = f"traceback in {files[0].baseFilename}" if files else "traceback: rerun with HYDRA_FULL_ERROR=1"
            print(f"error: {_message(err)} ({where})", file=sys.stderr)
            sys.exit(1)

    return wrapper
