"""The Hydra configs of every tool (YAML only; shipped in the wheel as package data).

``CONFIG_DIR`` is the one place the tools, the ``--help`` text and the tests find them, whether vidssl runs
from a checkout or from an installed wheel.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
