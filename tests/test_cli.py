"""A Hydra target that cannot be imported shows the underlying error, not only 'Error locating target'."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from vidssl.app.cli import explain_instantiation_errors, root_cause

REPO = Path(__file__).resolve().parents[1]


def test_root_cause_follows_explicit_and_implicit_chains() -> None:
    try:
        try:
            raise OSError("undefined symbol")
        except OSError:
            raise ImportError("cannot import") from None  # suppresses display, but __context__ is kept
    except ImportError as err:
        assert isinstance(root_cause(err), OSError)
    err = ValueError("alone")
    assert root_cause(err) is err


def test_the_cause_of_a_failed_target_import_is_in_the_message(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "brokenmod.py").write_text("raise OSError('libtorchaudio.so: undefined symbol: xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    @explain_instantiation_errors
    def main() -> None:
        instantiate({"_target_": "brokenmod.Thing"})

    with pytest.raises(InstantiationException) as info:
        main()
    message = str(info.value)
    assert "Error locating target 'brokenmod.Thing'" in message
    assert message.splitlines()[-1] == "caused by OSError: libtorchaudio.so: undefined symbol: xyz"


def test_pretrain_prints_the_cause_last(tmp_path: Path) -> None:
    (tmp_path / "brokenmod.py").write_text("raise OSError('libtorchaudio.so: undefined symbol: xyz')\n")
    root = tmp_path / "data"
    root.mkdir()
    (root / "clip.mp4").write_bytes(b"")  # never decoded: the transform fails to build first
    (tmp_path / "manifest.csv").write_text("path,label\nclip.mp4,0\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "pretrain.py"), "task=simclr", "dataset=csv",
         f"dataset.root={root}", f"dataset.manifest={tmp_path / 'manifest.csv'}",
         "task.data.transform._target_=brokenmod.Thing", f"trainer.out_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "caused by OSError: libtorchaudio.so: undefined symbol: xyz" in "\n".join(lines[-3:]), result.stderr
