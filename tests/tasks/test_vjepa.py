"""V-JEPA against the official code (fixtures recorded by tests/fixtures/vjepa/record.py, float64, tiny size):
encoder, predictor, target, loss, every gradient norm, one AdamW + EMA step, the masks; plus the pure
functions against slow obvious references."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidssl.datasets.masks import MaskConfig, MultiBlockMasks
from vidssl.encoders.vit_video import VideoViT, rotate
from vidssl.train import param_groups
from vidssl.tasks.vjepa import VJEPA, feature_std, jepa_loss, rankme

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vjepa"
sys.path.insert(0, str(FIXTURES))
from vjepa_seeded import CASE, fill_, seeded_video  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURES / "expected.pt", weights_only=True)


def tiny_task(use_rope: bool) -> VJEPA:
    c = CASE
    encoder = VideoViT(embed_dim=c["dim"], depth=c["depth"], num_heads=c["heads"], img_size=c["HW"],
                       num_frames=c["T"], patch_size=c["patch"], tubelet_size=c["tubelet"], use_rope=use_rope,
                       uniform_power=True)
    task = VJEPA(encoder=encoder, num_frames=c["T"], img_size=c["HW"], predictor_dim=c["pred_dim"],
                 predictor_depth=c["pred_depth"], predictor_heads=c["pred_heads"], masks=c["masks"],
                 loss_exp=c["loss_exp"], ema=(0.99, 0.99))
    for part in (task.encoder, task.predictor, task.target_encoder):
        fill_(part)
    return task.double()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kind", ["sincos", "rope"])
def test_training_step_equals_official(kind, expected):
    ref = expected[kind]
    task = tiny_task(kind == "rope")
    video = seeded_video(CASE["input_seed"], CASE["B"], CASE["T"], CASE["HW"])
    task.train()
    with torch.no_grad():
        assert close(task.target_encoder.tokens(video), ref["features"])
        assert close(task.targets(video), ref["target"])
        for (context, target), z in zip(ref["masks"], ref["context"]):
            assert close(task.encoder.tokens(video, context), z)
        for (context, target), z in zip(ref["masks"], ref["prediction"]):
            assert close(task.predictor(task.encoder.tokens(video, context), context, target), z)
    out = task({"video": video, "masks": ref["masks"]})
    assert abs(out["loss"].item() - float(ref["loss"])) < TOL
    out["loss"].backward()
    grads = {n: p.grad.norm() for n, p in task.named_parameters() if p.grad is not None}
    assert grads.keys() == ref["grad_norms"].keys()
    for name, norm in ref["grad_norms"].items():
        assert abs(float(grads[name]) - float(norm)) < TOL, name
    # One AdamW step (official groups: biases and norms without decay) and the EMA of the target.
    optimizer = torch.optim.AdamW(param_groups(task), lr=expected["step"]["lr"],
                                  weight_decay=expected["step"]["weight_decay"])
    optimizer.step()
    task.on_train_step_end(1, 10)
    state = task.state_dict()
    for name, norm in {**ref["encoder_after"], **ref["target_after"]}.items():
        assert abs(float(state[name].norm()) - float(norm)) < TOL, name


def test_mask_token_per_config_reads_token_j(expected):
    ref = expected["rope"]
    video = seeded_video(CASE["input_seed"], CASE["B"], CASE["T"], CASE["HW"])
    task = tiny_task(True)
    shared = task({"video": video, "masks": ref["masks"]})["loss"]
    task.mask_token_per_config = True
    with torch.no_grad():
        task.predictor.mask_tokens[1].copy_(task.predictor.mask_tokens[0])
    assert torch.equal(task({"video": video, "masks": ref["masks"]})["loss"], shared)  # same token values
    with torch.no_grad():
        task.predictor.mask_tokens[1].add_(torch.randn(task.predictor.mask_tokens[1].shape, dtype=torch.float64))
    assert not torch.allclose(task({"video": video, "masks": ref["masks"]})["loss"], shared)


def test_schedules_equal_official(expected):
    ref = expected["schedules"]
    s = ref["settings"]
    task = tiny_task(False)
    task.schedule = {"start_lr": s["start_lr"], "final_lr": s["final_lr"], "warmup_steps": s["warmup_steps"],
                     "final_wd": s["final_wd"], "total_steps": s["total_steps"]}
    groups = [{"initial_lr": s["ref_lr"], "lr": 0.0, "weight_decay": s["ref_wd"]},
              {"initial_lr": s["ref_lr"], "lr": 0.0, "weight_decay": 0.0}]
    for step in range(s["steps"]):
        task.optimizer_schedule(step, 1000, groups)
        assert abs(groups[0]["lr"] - float(ref["lr"][step])) < 1e-12 and groups[1]["lr"] == groups[0]["lr"]
        assert abs(groups[0]["weight_decay"] - float(ref["wd"][step])) < 1e-12 and groups[1]["weight_decay"] == 0


def test_masks_equal_official_indices():
    official = torch.load(FIXTURES / "masks.pt", weights_only=True)
    grid = (CASE["T"] // CASE["tubelet"], CASE["HW"] // CASE["patch"], CASE["HW"] // CASE["patch"])
    generators = [MultiBlockMasks(MaskConfig(**m), grid) for m in CASE["masks"]]
    for key, pairs in official["exact"].items():
        seed, counter = (int(v) for v in key.split("_"))
        g = torch.Generator().manual_seed(seed)
        for masks, (context, target) in zip(generators, pairs):
            ours = masks(3, counter=counter, generator=g)
            assert torch.equal(ours[0], context) and torch.equal(ours[1], target), key
    counts = []
    for counter in range(1000):
        g = torch.Generator().manual_seed(counter + 10_000)
        pairs = [m(4, counter=counter, generator=g) for m in generators]
        counts.append([pairs[0][0].shape[1], pairs[0][1].shape[1], pairs[1][0].shape[1], pairs[1][1].shape[1]])
    assert torch.equal(torch.tensor(counts), official["counts"])


def test_masks_are_a_partition_of_the_grid():
    masks = MultiBlockMasks(MaskConfig(num_blocks=2, spatial_scale=(0.7, 0.7)), (8, 16, 16))
    context, target = masks(1, counter=3, generator=torch.Generator().manual_seed(0))
    both = torch.cat([context[0], target[0]])
    assert both.unique().numel() == both.numel() == 8 * 16 * 16  # one clip: nothing trimmed
    assert (context.diff(dim=1) > 0).all() and (target.diff(dim=1) > 0).all()


def test_jepa_loss_against_loops():
    torch.manual_seed(0)
    z = [torch.randn(2, 5, 3), torch.randn(2, 7, 3)]
    h = [torch.randn(2, 5, 3), torch.randn(2, 7, 3)]
    for p in (1.0, 2.0):
        per_config = []
        for zi, hi in zip(z, h):
            total = sum(abs(float(zi[b, m, d] - hi[b, m, d])) ** p for b in range(2) for m in range(zi.shape[1])
                        for d in range(3))
            per_config.append(total / zi.numel() / p)
        assert abs(float(jepa_loss(z, h, p)) - sum(per_config) / 2) < 1e-5


def test_rankme_and_std_against_definitions():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    s = torch.linalg.svdvals(x.double())
    p = s / s.sum()
    assert abs(float(rankme(x)) - float(torch.exp(-(p * p.log()).sum()))) < 1e-3
    assert abs(float(feature_std(x)) - sum(float(x[:, d].std()) for d in range(8)) / 8) < 1e-5
    collapsed = torch.randn(50, 1) @ torch.randn(1, 8)  # rank one
    assert float(rankme(collapsed)) < 1.01


def test_rotate_against_pairwise_rotation():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    pos = torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64)
    out = rotate(x, pos)
    for n in range(3):
        # channel j uses frequency j mod 4 (the official tiling); pairs (2i, 2i+1) rotate together
        for j in range(0, 8, 2):
            f0, f1 = (1.0 / 10000 ** ((k % 4) / 4.0) for k in (j, j + 1))
            a, b = x[0, 0, n, j], x[0, 0, n, j + 1]
            assert abs(float(out[0, 0, n, j] - (a * torch.cos(pos[n] * f0) - b * torch.sin(pos[n] * f0)))) < 1e-12
            assert abs(float(out[0, 0, n, j + 1] - (b * torch.cos(pos[n] * f1) + a * torch.sin(pos[n] * f1)))) < 1e-12


def test_collapse_warns_once(caplog):
    task = tiny_task(False)
    h = torch.ones(2, 32, CASE["dim"], dtype=torch.float64)
    with caplog.at_level("WARNING"):
        task.health(h)
        task.health(h)
    assert sum("collapsed" in r.message for r in caplog.records) == 1
