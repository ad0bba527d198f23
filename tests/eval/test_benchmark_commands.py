"""One command per benchmark: tools/propagate.py benchmark=... and tools/evaluate.py metric=... on the
synthetic sets (vidssl.datasets.synthetic_benchmarks), and the presets each benchmark's config sets."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from vidssl.configs import CONFIG_DIR
from vidssl.datasets.synthetic_benchmarks import make_jhmdb, make_vip, make_ytvos
from vidssl.eval.jhmdb import jhmdb_videos, pck, read_joints
from vidssl.eval.report import write_metrics


def _tool(name: str):
    return importlib.import_module(f"vidssl.app.{name}")  # what tools/<name>.py runs


def _cfg(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config, overrides=overrides)


def test_presets_and_davis_defaults_unchanged(tmp_path):
    davis = _cfg("propagate", ["davis_root=D", "out=R"])
    assert davis.layout is None and davis.n_context == 20 and davis.split == "val"
    assert _cfg("propagate", ["benchmark=davis", "root=D", "out=R"]).n_context == 20
    jhmdb = _cfg("propagate", ["benchmark=jhmdb", "root=D", "out=R"])
    assert (jhmdb.layout, jhmdb.n_context, jhmdb.input_size, jhmdb.sigma, jhmdb.radius) == ("jhmdb", 7, 320, 0.5, 12)
    vip = _cfg("propagate", ["benchmark=vip", "root=D", "out=R"])
    assert (vip.layout, vip.n_context, vip.input_size, vip.label_resize) == ("vip", 4, 560, "bilinear")
    for name in ("ytvos", "mose"):
        vos = _cfg("propagate", [f"benchmark={name}", "root=D", "out=R"])
        assert (vos.layout, vos.split, vos.n_context) == ("vos", "valid", 20)
    assert _cfg("propagate", ["benchmark=jhmdb", "n_context=3", "root=D", "out=R"]).n_context == 3  # the command wins


@pytest.fixture(scope="module")
def tools():
    return _tool("propagate"), _tool("evaluate")


def _run(tools, tmp_path, benchmark: str, root: Path, metric: str, propagate_extra=(), evaluate_extra=()) -> dict:
    propagate, evaluate = tools
    out = tmp_path / f"res_{benchmark}"
    cfg = _cfg("propagate", [f"benchmark={benchmark}", f"root={root}", f"out={out}", *propagate_extra])
    from vidssl.eval.features import build_feature_fn

    feature_fn = build_feature_fn(cfg.features, stride=cfg.stride)
    propagate.propagate_benchmark(cfg, feature_fn, {k: cfg[k] for k in propagate.PROTOCOL})
    ecfg = _cfg("evaluate", [f"metric={metric}", f"root={root}", f"results={out}", f"out={out}_m", *evaluate_extra])
    metrics, table, where = evaluate.EVALUATIONS[metric](ecfg)
    write_metrics(where, metrics, table)
    return json.loads((where / "metrics.json").read_text())


def test_ytvos_command(tools, tmp_path):
    root = make_ytvos(tmp_path / "ytvos", num_videos=1, num_frames=8, enter=3)
    metrics = _run(tools, tmp_path, "ytvos", root, "ytvos", ["split=heldout"], ["vos_split=heldout"])
    assert {"Overall", "J_seen", "J_unseen", "F_seen", "F_unseen", "J&F"} <= set(metrics)
    assert metrics["layout_problems"] == 0 and len(metrics["per_object"]) == 2
    assert (tmp_path / "res_ytvos" / "submission.zip").is_file()


def test_jhmdb_command_beats_keeping_the_first_pose(tools, tmp_path):
    root = make_jhmdb(tmp_path / "jhmdb", num_frames=8)
    metrics = _run(tools, tmp_path, "jhmdb", root, "jhmdb", ["input_size=256"])  # 128×96 frames: 4×3-px cells
    assert metrics["videos"] == 2 and len(metrics["per_joint"]["per_joint@0.2"]) == 15
    gts = [read_joints(v.joints) for v in jhmdb_videos(root)]
    still = pck([np.repeat(g[:, :, :1], g.shape[2], axis=2) for g in gts], gts)
    # measured (pixel features): PCK@0.1 / 0.2 41 / 59 propagated, 0 / 10 with the first pose kept
    assert metrics["PCK@0.2"] > still["PCK@0.2"] + 30, (metrics["PCK@0.2"], still["PCK@0.2"])


def test_vip_command(tools, tmp_path):
    from PIL import Image

    from vidssl.eval.vip import evaluate_vip, read_parts, vip_videos

    root = make_vip(tmp_path / "vip", num_videos=1, num_frames=4)
    metrics = _run(tools, tmp_path, "vip", root, "vip", ["input_size=256"])  # 64×64 frames: 2-px cells
    assert metrics["frames"] == 4 and len(metrics["IoU"]) == 20
    written = sorted((tmp_path / "res_vip" / "videos1").glob("*.png"))
    annotated = sorted(p.name for p in (root / "Annotations" / "Category_ids" / "videos1").glob("*.png"))
    assert [p.name for p in written] == annotated
    nearest = _run(tools, tmp_path, "vip", root, "vip", ["input_size=256", "label_resize=nearest"])
    name, frames, annotations = vip_videos(root)[0]
    first = read_parts(annotations / f"{frames[0].stem}.png").astype("uint8")
    for frame in frames:  # the floor: the first annotation kept on every frame
        (tmp_path / "still" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(first).save(tmp_path / "still" / name / f"{frame.stem}.png")
    still, _ = evaluate_vip(root, tmp_path / "still")
    # measured (pixel features): mIoU 0.35 with the official bilinear resize of the first annotation's ids
    # (in-between ids on part borders become classes of their own), 0.57 with nearest; first annotation kept 0.23
    assert metrics["mIoU"] > still["mIoU"] + 0.05, (metrics["mIoU"], still["mIoU"])
    assert nearest["mIoU"] > metrics["mIoU"] + 0.1, (nearest["mIoU"], metrics["mIoU"])


def test_make_synthetic_benchmarks_tool(tmp_path):
    tool = _tool("make_synthetic_benchmarks")
    tool.main([f"out={tmp_path}", "which=[vip,jhmdb]"])
    assert (tmp_path / "vip" / "lists" / "val_videos.txt").is_file()
    assert len(jhmdb_videos(tmp_path / "jhmdb")) == 2 and not (tmp_path / "ytvos").exists()
    with pytest.raises(SystemExit, match="unknown option"):
        tool.main([f"out={tmp_path}", "seeds=1"])
    with pytest.raises(ValueError, match="davis"):
        tool.main([f"out={tmp_path}", "which=[davis]"])
