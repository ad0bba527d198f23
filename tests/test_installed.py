"""vidssl as `pip install .` leaves it, run outside the checkout: the demo (``quick=true``, every step and command),
a benchmark suite, a tool's ``--help`` (the YAML comments) and a nested config group (``hydra/launcher=slurm``).

The wheel is built from a copy of the working tree and installed into a fresh venv under tmp_path whose only way
to the dependencies is a ``.pth`` naming this environment's site-packages (whose own ``.pth`` files, such as an
editable vidssl's, are not read from there), so vidssl, its tools and its configs can come from the wheel alone.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_wheel(source: Path, out: Path) -> Path:
    """The wheel of `source`, built offline by this environment's setuptools (the test extra asks for >= 70.1,
    which builds wheels by itself)."""
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", out, source, cwd=source)
    return next(out.glob("vidssl-*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """(the fresh venv's python, an environment without the checkout, the wheel)."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"  # the working tree's package, so the build writes nothing into the checkout
    shutil.copytree(REPO / "vidssl", source / "vidssl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheel = build_wheel(source, base / "dist")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    python = venv / "bin" / "python"
    purelib = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=base).stdout.strip())
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", purelib, wheel, cwd=base)
    # after the wheel's own directory: the dependencies of this environment
    (purelib / "zz_shared_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return python, env, wheel


def test_the_wheel_ships_every_config(installed: tuple[Path, dict[str, str], Path]) -> None:
    _, _, wheel = installed
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = REPO / "vidssl" / "configs"
    yaml = {p.relative_to(REPO).as_posix() for p in configs.rglob("*.yaml")}
    assert len(yaml) > 50 and "vidssl/configs/hydra/launcher/slurm.yaml" in yaml  # nested groups included
    assert yaml <= shipped, f"missing from the wheel: {sorted(yaml - shipped)}"
    assert {p.name for p in configs.rglob("*.py")} == {"__init__.py"}  # configs hold YAML, and CONFIG_DIR
    assert not any(name.startswith(("tools/", "tests/", "configs/")) for name in shipped)


def test_vidssl_and_its_configs_come_from_the_wheel(installed: tuple[Path, dict[str, str], Path],
                                                    tmp_path: Path) -> None:
    python, env, _ = installed
    probe = ("import json, vidssl; from vidssl.configs import CONFIG_DIR; from hydra import compose, "
             "initialize_config_dir\n"
             "with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base='1.3'):\n"
             "    cfg = compose('pretrain', overrides=['hydra/launcher=slurm', 'trainer.out_dir=R'], "
             "return_hydra_config=True)\n"
             "print(json.dumps([vidssl.__file__, str(CONFIG_DIR), cfg.hydra.launcher.max_num_timeout]))")
    module, config_dir, requeues = json.loads(_run(python, "-c", probe, cwd=tmp_path, env=env).stdout)
    venv = python.parents[1]
    assert Path(module).is_relative_to(venv) and Path(config_dir).is_relative_to(venv), (module, config_dir)
    assert requeues == 20  # the SLURM preset, a nested group, from the installed configs
    shown = _run(python, "-m", "vidssl.app.propagate", "--help", cwd=tmp_path, env=env).stdout
    assert "python tools/propagate.py davis_root=DIR" in shown  # the module's docstring
    assert "keys of vidssl/configs/propagate.yaml" in shown and "n_context: 20" in shown  # and the YAML, commented


def test_demo_and_benchmark_run_from_the_installed_wheel(installed: tuple[Path, dict[str, str], Path],
                                                         tmp_path: Path) -> None:
    python, env, _ = installed
    demo = _run(python, "-m", "vidssl.app.demo", "out=demo", "quick=true", cwd=tmp_path, env=env, timeout=600)
    assert "python -m vidssl.app.pretrain task=memdpc" in demo.stdout  # the commands a user types, shown
    summary = (tmp_path / "demo" / "summary.md").read_text()
    for title in ("Video retrieval on the held-out split (MemDPC)", "Video retrieval with optical flow",
                  "Label propagation on 2 sequences", "Pseudo-labels against the true classes (SeLaVi)"):
        assert title in summary, title
    assert sorted(p.name for p in (tmp_path / "demo" / "runs").iterdir()) == ["crw", "memdpc", "memdpc_flow", "selavi"]
    assert (tmp_path / "demo" / "crw" / "real_clip" / "overlay.gif").is_file()
    small = ["n=64", "k=4", "iterations=[3]", "dtypes=[float32]", "scales=[1.0]", "repeats=1", "task_step=false"]
    _run(python, "-m", "vidssl.app.benchmark", "suite=sinkhorn", "out=bench", *small, cwd=tmp_path, env=env)
    result = json.loads((tmp_path / "bench" / "benchmark_sinkhorn.json").read_text())
    assert result["suite"] == "sinkhorn" and result["rows"] and result["command"].startswith("python -m vidssl.app")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "demo"]  # nothing outside out=
