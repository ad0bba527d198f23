"""tools/convert_checkpoint.py source=selavi: an AVModel checkpoint as the official main.py saves it
becomes a task=selavi checkpoint whose heads give the official outputs.

The official model (R(2+1)D-18 + ResNet-9 + 2×2 MLP heads, K=8) is ~37M numbers, too large for a
fixture: tests/fixtures/selavi/record.py stored its key/shape list, the seed of the weights it loaded
(`seeded_state`, rebuilt here) and the official eval-mode outputs on a small input with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from vidssl.run import Checkpoint, load_encoder
from vidssl.convert import convert_checkpoint
from fixture_helpers import load_module

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "selavi"


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    recorded = torch.load(FIXTURES / "checkpoint.pt", weights_only=True)
    weights = load_module(FIXTURES / "record.py").seeded_state(recorded["shapes"], int(recorded["seed"]))
    path = tmp_path_factory.mktemp("selavi") / "checkpoint.pth.tar"
    selflabels = torch.randint(0, 8, (50, 2), generator=torch.Generator().manual_seed(0))
    torch.save({"epoch": 7, "dist": None, "model": {f"module.{k}": v for k, v in weights.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
                "selflabels": selflabels}, path)
    return path, {"recorded": recorded, "selflabels": selflabels}


def test_converted_checkpoint_gives_the_official_head_outputs(official, tmp_path: Path) -> None:
    path, expected = official
    out = tmp_path / "selavi.pt"
    convert_checkpoint("selavi", path, out)
    state = Checkpoint.load(out).to_dict()
    task = instantiate(state["config"]["task"]["model"])
    task.load_state_dict(state["model"])  # strict: every weight has its place
    task.eval()
    recorded = expected["recorded"]
    with torch.no_grad():
        logits = task.head_logits(task.embed({"video": recorded["video"], "audio": recorded["audio"]}))
    torch.testing.assert_close(torch.stack(logits["video"]), recorded["video_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.stack(logits["audio"]), recorded["audio_logits"], rtol=1e-4, atol=1e-5)
    assert torch.equal(task.table.labels, expected["selflabels"].T)  # the official labels, H×N
    assert task.num_clusters == [8, 8]

    # The encoder alone loads as any checkpoint's does.
    encoder = load_encoder(out)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), task.encoder.state_dict().values()))


def test_not_an_avmodel_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model": {"module.backbone.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="video_network"):
        convert_checkpoint("selavi", path, tmp_path / "out.pt")


def test_linear_single_head_checkpoints_map_to_linear_heads() -> None:
    """use_mlp=False, headcount=1: ``mlp_v`` / ``mlp_a`` are Linear layers (with bias)."""
    from vidssl.convert.selavi import _heads
    from vidssl.tasks.selavi.heads import cluster_head

    weights = {"mlp_v.weight": torch.randn(5, 512), "mlp_v.bias": torch.randn(5),
               "mlp_a.weight": torch.randn(5, 512), "mlp_a.bias": torch.randn(5)}
    heads, num_clusters, hidden = _heads(weights)
    assert (num_clusters, hidden) == ([5], 0)
    head = cluster_head(512, 5, hidden=hidden)
    head.load_state_dict({k.removeprefix("heads.video.0."): v for k, v in heads.items() if ".video." in k})
    x = torch.randn(3, 512)
    torch.testing.assert_close(head(x), x @ weights["mlp_v.weight"].T + weights["mlp_v.bias"])
    with pytest.raises(ValueError, match="mlp_a"):
        _heads({"mlp_v0.weight": torch.randn(5, 512), "mlp_v0.bias": torch.randn(5)})
