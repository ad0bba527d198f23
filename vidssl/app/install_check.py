"""Check that the compiled stack loads together, in one line: ``python -m vidssl.app.install_check``.

The stack: torch, torchvision, torchaudio, av, decord and OpenCV (``cv2``, for optical flow).

torch, torchvision and torchaudio are built against each other: a torchaudio or torchvision release that does
not match the installed torch fails only when its compiled library loads (``undefined symbol``), and then
every task fails, far from the cause. ``make test`` and ``make demo`` run this first, so such an install is
named at once: the package, the installed versions that clash, and the version ``requirements.lock`` pins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable
from pathlib import Path

STACK = ("torch", "torchvision", "torchaudio", "av", "decord", "cv2")
# The distribution that installs each module (its name in requirements.lock), where the two differ.
DISTRIBUTIONS = {"cv2": "opencv-contrib-python-headless"}
BUILT_AGAINST_TORCH = ("torchvision", "torchaudio")
LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"  # in a checkout; absent from a wheel


class InstallCheckError(RuntimeError):
    """One package of the stack does not load or does not work."""


def _torch() -> None:
    torch = importlib.import_module("torch")
    torch.ones(2, 2) @ torch.ones(2, 2)


def _torchvision() -> None:
    torch = importlib.import_module("torch")
    ops = importlib.import_module("torchvision.ops")
    # nms is a compiled operator: it fails when torchvision's library does not match torch.
    ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1.0]), 0.5)


def _torchaudio() -> None:
    torch = importlib.import_module("torch")
    transforms = importlib.import_module("torchaudio.transforms")
    transforms.MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=40)(torch.zeros(1, 1600))


def _av() -> None:
    av = importlib.import_module("av")
    for codec in ("h264", "aac"):  # what the synthetic corpus and most datasets are encoded with
        av.codec.Codec(codec, "r")


def _cv2() -> None:
    cv2 = importlib.import_module("cv2")
    cv2.optflow.DualTVL1OpticalFlow_create()  # TV-L1 is in the contrib build only


def _decord() -> None:
    decord = importlib.import_module("decord")
    decord.VideoReader  # noqa: B018 - the attribute exists only when the native library loaded


EXERCISES: dict[str, Callable[[], None]] = {
    "torch": _torch, "torchvision": _torchvision, "torchaudio": _torchaudio, "av": _av, "decord": _decord, "cv2": _cv2,
}


def installed_versions() -> dict[str, str | None]:
    """Each stack package's installed version, read from its metadata (no import), None when missing."""
    versions: dict[str, str | None] = {}
    for name in STACK:
        try:
            versions[name] = importlib.metadata.version(DISTRIBUTIONS.get(name, name))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def locked_versions(lock_file: Path = LOCK_FILE) -> dict[str, str]:
    """The stack's versions pinned in ``requirements.lock`` (empty when vidssl runs outside its repository)."""
    if not lock_file.is_file():
        return {}
    module_of = {DISTRIBUTIONS.get(name, name): name for name in STACK}
    pins = {}
    for line in lock_file.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() in module_of:
            pins[module_of[name.strip().lower()]] = version.strip()
    return pins


def _failure(name: str, err: BaseException, installed: dict[str, str | None], locked: dict[str, str]) -> str:
    version = installed.get(name)
    what = f"{name} {version}" if version else f"{name} (not installed)"
    if name in BUILT_AGAINST_TORCH:
        what += f" does not work with torch {installed.get('torch')}"
    else:
        what += " does not work"
    reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line, however long the loader's message
    pinned = [f"{DISTRIBUTIONS.get(n, n)}=={v}" for n, v in locked.items() if (installed.get(n) or "").split("+")[0] != v]
    fix = (f"requirements.lock pins {', '.join(pinned)}; reinstall with: rm -rf .venv && make install" if pinned
           else "reinstall with: rm -rf .venv && make install")
    if not locked and not LOCK_FILE.is_file():  # an installed wheel: the repository's lock file is not beside it
        fix = ("reinstall the stack with vidssl's requirements.lock as pip constraints (not found beside this "
               "install, so the versions were not compared with its pins)")
    return f"{what} ({reason}); {fix}"


def check_stack() -> dict[str, str | None]:
    """Import and exercise each package of the stack; the installed versions, or ``InstallCheckError``."""
    installed = installed_versions()
    for name in STACK:
        try:
            EXERCISES[name]()
        except Exception as err:  # ImportError, OSError (undefined symbol), RuntimeError (missing operator) ...
            raise InstallCheckError(_failure(name, err, installed, locked_versions())) from err
    return installed


def main() -> int:
    try:
        versions = check_stack()
    except InstallCheckError as err:
        print(f"install check failed: {err}", file=sys.stderr)
        return 1
    print("install check: " + ", ".join(f"{name} {versions[name]}" for name in STACK))
    return 0


if __name__ == "__main__":
    sys.exit(main())
