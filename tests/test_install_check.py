"""The install check names the package that does not load, with the versions that clash, in one line."""

from __future__ import annotations

import sys

import pytest

from vidssl.app import install_check


def test_the_installed_stack_passes_and_prints_every_version(capsys: pytest.CaptureFixture) -> None:
    assert install_check.main() == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0
    for name in install_check.STACK:
        assert f"{name} " in out


def test_installed_stack_matches_the_lock_file() -> None:
    locked = install_check.locked_versions()
    assert set(locked) == set(install_check.STACK)
    installed = install_check.installed_versions()
    assert {name: (installed[name] or "").split("+")[0] for name in locked} == locked


def test_a_broken_import_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # None in sys.modules makes `import torchaudio.transforms` raise ImportError, as a broken install does.
    monkeypatch.setitem(sys.modules, "torchaudio.transforms", None)
    assert install_check.main() == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("install check failed: torchaudio ")
    assert "does not work with torch " in err
    assert "import of torchaudio.transforms halted" in err


def test_a_library_that_fails_to_load_shows_the_loader_message_and_the_pin(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def undefined_symbol() -> None:
        raise OSError("Could not load this library: libtorchaudio.so\n(undefined symbol: torch_exception_get_what)")

    monkeypatch.setitem(install_check.EXERCISES, "torchaudio", undefined_symbol)
    real = install_check.installed_versions()
    monkeypatch.setattr(install_check, "installed_versions", lambda: {**real, "torchaudio": "2.11.1"})
    assert install_check.main() == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"torchaudio 2.11.1 does not work with torch {real['torch']}" in err
    assert "undefined symbol: torch_exception_get_what" in err
    locked = install_check.locked_versions()["torchaudio"]
    assert f"requirements.lock pins torchaudio=={locked}" in err


def test_a_package_missing_altogether(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setattr(install_check, "installed_versions",
                        lambda: {name: None if name == "decord" else "1.0" for name in install_check.STACK})
    with pytest.raises(install_check.InstallCheckError, match=r"^decord \(not installed\) does not work"):
        install_check.check_stack()
