"""Loading code that lives beside recorded fixtures (tests/fixtures/<name>/*.py), which is not a package."""

import importlib.util
from pathlib import Path
from types import ModuleType


def load_module(path: Path) -> ModuleType:
    """Import the Python file at ``path`` under its parent folder's and its own name."""
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
