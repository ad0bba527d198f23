"""What the command-line tools share: errors that show their cause."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from hydra.errors import InstantiationException

T = TypeVar("T")


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of an explicit (``raise ... from``) or implicit chain."""
    seen = {id(err)}
    while (inner := err.__cause__ or err.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        err = inner
    return err


def explain_instantiation_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a Hydra ``main`` so a ``_target_`` that fails to import or build shows why in the last lines.

    Hydra reports only "Error locating target 'x.Y'" and hides the ImportError or OSError behind it (a
    torchaudio built for another torch, say) unless HYDRA_FULL_ERROR=1 is set. Put it below ``@hydra.main``.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InstantiationException as err:
            cause = root_cause(err)
            reason = f"{type(cause).__name__}: {cause}"
            if cause is err or str(cause) in str(err):  # "Error in call to target" already quotes it
                raise
            raise InstantiationException(f"{err}\ncaused by {reason}") from cause

    return wrapper
