"""Import the authors' videowalk code for side-by-side runs (benchmarks, fixture recording).

The official repository is never part of vidssl: its path is given at run time (``official=DIR``,
the folder holding ``code/``). Its modules import packages its label propagation does not need
(OpenCV for image I/O, matplotlib, imageio, visdom, wandb, scikit-image, kornia); those not
installed are replaced by stand-ins whose attributes and calls return more stand-ins, and
matplotlib's ``cm.jet`` (the debugging heat map of ``dump_predictions``) returns zeros.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

OPTIONAL = ("cv2", "matplotlib", "imageio", "visdom", "wandb", "skimage", "kornia")


class _Anything:
    """Any attribute or call result of a module whose output is never compared."""

    def __init__(self, *args, **kwargs) -> None:
        """Takes and ignores any arguments, as the object it stands in for would take them."""

    def __call__(self, *args, **kwargs) -> _Anything:
        return _Anything()

    def __getattr__(self, name: str) -> _Anything:
        return _Anything()


class _StandIn(types.ModuleType):
    __path__: list = []  # a package, so that its submodules import too

    def __getattr__(self, name: str) -> _Anything:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        if spec.name == "matplotlib":
            module.cm = types.SimpleNamespace(jet=lambda x: np.zeros((*np.shape(x), 4)))
        return module

    def exec_module(self, module) -> None:
        """Nothing to execute: every attribute of a stand-in module is made on demand."""


def import_videowalk(official: str | Path) -> types.SimpleNamespace:
    """The official ``test``, ``utils``, ``utils.test_utils`` and ``model`` modules of videowalk.

    ``official``: the repository's root (with ``code/test.py``). Run-time shims: stand-ins for the
    optional packages that are not installed, ``np.int`` (removed from numpy, used by ``model.py``)
    set to ``int``, and ``test.vis`` (defined by its ``__main__`` block, read by ``test()``) set to None.
    """
    code = Path(official).resolve() / "code"
    if not (code / "test.py").is_file():
        raise FileNotFoundError(f"official={official}: no code/test.py there (the ajabri/videowalk repository)")
    missing = {name for name in OPTIONAL if importlib.util.find_spec(name) is None}
    if missing and not any(isinstance(f, _StandInFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StandInFinder(missing))
    np.int = int  # type: ignore[attr-defined]
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    test = importlib.import_module("test")
    test.vis = None
    return types.SimpleNamespace(test=test, utils=importlib.import_module("utils"),
                                 test_utils=importlib.import_module("utils.test_utils"),
                                 model=importlib.import_module("model"))
