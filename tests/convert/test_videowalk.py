"""videowalk checkpoints: converted weights give the official encoder's features and labels.

The official-format checkpoint is rebuilt here from the official model's key list and shapes and a
seed (tests/fixtures/videowalk/seeded.py; a ResNet-18 is too large to keep), with the training
``argparse.Namespace`` the official ``train.py`` stores; record.py ran the official ``test.py``
(model, loader and test loop) on the same weights and the tiny video in ``davis/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidssl.run import load_encoder
from vidssl.datasets.formats import read_mask
from vidssl.eval.features import EncoderFeatures
from vidssl.eval.propagate import read_frame
from fixture_helpers import load_module

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "videowalk"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The official-format checkpoint, converted by the command line a user runs."""
    folder = tmp_path_factory.mktemp("videowalk")
    recorded = json.loads((FIXTURE / "official_keys.json").read_text())
    state = load_module(FIXTURE / "seeded.py").seeded_state(recorded["shapes"])
    official = folder / "pretrained.pth"
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 0,
                "args": argparse.Namespace(**recorded["args"])}, official)
    out = folder / "crw.pt"
    subprocess.run([sys.executable, "tools/convert_checkpoint.py", "source=videowalk", f"in={official}",
                    f"out={out}"], cwd=REPO, check=True, capture_output=True, text=True)
    return out


def test_converted_checkpoint_has_the_contract(converted):
    from hydra.utils import instantiate

    state = torch.load(converted, weights_only=True)
    assert set(state) >= {"encoder", "model", "config"}
    assert state["config"]["encoder"]["padding_mode"] == "reflect"  # --model-type scratch
    task = instantiate(state["config"]["task"]["model"])
    task.load_state_dict(state["model"])  # strict: encoder and head both fit vidssl's CRW
    assert task.head.weight.shape == (128, 512)
    assert state["config"]["official"]["args"]["model_type"] == "scratch"


def test_converted_encoder_gives_the_official_features(converted):
    recorded = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    features = EncoderFeatures(load_encoder(converted))  # layer=auto: layer3, as test.py
    frames = sorted((FIXTURE / "davis" / "JPEGImages" / "480p" / "walk").glob("*.jpg"))
    channels = recorded["features_first"].shape[0]
    for frame, name in ((frames[0], "features_first"), (frames[-1], "features_last")):
        ours = features(read_frame(frame))
        assert ours.shape[0] == 256
        torch.testing.assert_close(ours[:channels], recorded[name], rtol=0, atol=1e-5)


def test_propagate_with_the_converted_checkpoint_gives_the_official_labels(converted, tmp_path):
    recorded = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    out = tmp_path / "results"
    subprocess.run([sys.executable, "tools/propagate.py", f"davis_root={FIXTURE / 'davis'}", f"out={out}",
                    "features=checkpoint", f"checkpoint={converted}"], cwd=REPO, check=True, capture_output=True)
    official = recorded["labels"].numpy()
    masks = sorted((out / "walk").glob("*.png"))
    assert len(masks) == len(official) == 6
    first = read_mask(FIXTURE / "davis" / "Annotations" / "480p" / "walk" / "00000.png")
    np.testing.assert_array_equal(read_mask(masks[0]), first)  # the given mask (not scored by DAVIS)
    for t in range(1, len(masks)):
        ours = read_mask(masks[t])
        assert (ours != official[t]).sum() == 0, f"frame {t}: {(ours != official[t]).sum()} pixels differ"
    assert len(np.unique(official[-1])) == 3  # both discs are still tracked: the comparison is not vacuous


def test_converter_errors_name_the_problem(tmp_path):
    from vidssl.convert.videowalk import convert

    with pytest.raises(KeyError, match="'model'"):
        convert({"state_dict": {}})
    with pytest.raises(ValueError, match="imagenet50"):
        convert({"model": {}, "args": argparse.Namespace(model_type="imagenet50")})
    recorded = json.loads((FIXTURE / "official_keys.json").read_text())
    state = {k: torch.zeros(v) for k, v in recorded["shapes"].items() if ".layer4." not in k}
    with pytest.raises(KeyError, match="layer4"):
        convert({"model": state})


def test_old_key_layout_and_pickled_code_are_handled(tmp_path):
    from vidssl.convert import load_official
    from vidssl.convert.videowalk import SAFE_GLOBALS, convert

    recorded = json.loads((FIXTURE / "official_keys.json").read_text())
    state = {k.replace("layer1.0.conv1.weight", "layer1.0.conv1.1.weight"): torch.zeros(v)
             for k, v in recorded["shapes"].items()}
    assert "layer1.0.conv1.weight" in convert({"model": state})["encoder"]
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": argparse.Namespace(), "hook": Path("x")}, evil)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_official(evil, SAFE_GLOBALS)
