"""CRW: shapes, gradients, the walk against a slow reference, edge dropout, patch jitter, and the loss floor.

The equivalence with the authors' code is tests/tasks/test_crw_official.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vidssl.tasks.crw import (
    CRW,
    affinity_logits,
    cycle_loss,
    edge_dropout_masks,
    jitter_patches,
    palindrome_walks,
    random_crop_boxes,
    transition_matrices,
)
from tiny_encoders import SpaceToDepth, TinyFrameEncoder


def _nodes(b: int, d: int, t: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(b, d, t, n, generator=g), dim=1)


def test_runs_on_the_library_frame_encoder() -> None:
    from vidssl.encoders import resnet18_dense

    torch.manual_seed(0)
    task = CRW(encoder=resnet18_dense(base_width=4, padding_mode="reflect"), embed_dim=8)
    out = task({"video": torch.randn(2, 3, 4, 48, 48)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and task.encoder.conv1.weight.grad.abs().sum() > 0


def test_forward_shapes_finite_and_gradients_reach_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = TinyFrameEncoder()
    task = CRW(encoder=encoder, embed_dim=8)
    out = task({"video": torch.randn(2, 3, 4, 32, 32)})
    assert set(out) == {"loss", "walk_accuracy", "walk_accuracy_longest", "transition_entropy", "cycle_loss_2",
                        "cycle_loss_3", "embedding_std", "embedding_rankme", "embedding_rank_fraction"}
    # the mean of the per-length losses is the loss
    assert float(out["loss"].detach()) == pytest.approx((float(out["cycle_loss_2"]) + float(out["cycle_loss_3"])) / 2)
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_patch_nodes_are_normalised_and_counted() -> None:
    torch.manual_seed(0)
    task = CRW(encoder=TinyFrameEncoder(), embed_dim=8, patch_size=16, patch_stride=8)
    nodes = task.embed(torch.randn(2, 3, 3, 32, 32))
    assert nodes.shape == (2, 8, 3, 9)  # (32 - 16) / 8 + 1 = 3 patches a side
    torch.testing.assert_close(nodes.norm(dim=1), torch.ones(2, 3, 9))
    out = task({"video": torch.randn(2, 3, 3, 32, 32)})
    out["loss"].backward()
    assert task.encoder.net[0].weight.grad.abs().sum() > 0


def test_dense_nodes_are_the_feature_cells() -> None:
    task = CRW(encoder=SpaceToDepth(), embed_dim=None)
    video = torch.randn(1, 3, 2, 16, 24)
    nodes = task.embed(video)
    assert nodes.shape == (1, 192, 2, 6)
    # node (t=1, n=4) is cell (row 1, col 1) of frame 1: its pixels, normalised
    cell = nn.functional.pixel_unshuffle(video[:, :, 1], 8)[0, :, 1, 1]
    torch.testing.assert_close(nodes[0, :, 1, 4], cell / cell.norm())


def test_affinity_matches_pairwise_dot_products() -> None:
    nodes = _nodes(2, 5, 3, 4)
    logits = affinity_logits(nodes, temperature=0.5)
    for b in range(2):
        for t in range(2):
            for n in range(4):
                for m in range(4):
                    expected = torch.dot(nodes[b, :, t, n], nodes[b, :, t + 1, m]) / 0.5
                    torch.testing.assert_close(logits[b, t, n, m], expected)


@pytest.mark.parametrize("edge_dropout", [0.0, 0.5, 0.9999999])
@pytest.mark.parametrize("independent", [False, True])
def test_transitions_are_row_stochastic(edge_dropout: float, independent: bool) -> None:
    torch.manual_seed(0)
    logits = affinity_logits(_nodes(2, 6, 4, 5), temperature=0.07)
    masks = edge_dropout_masks(logits, edge_dropout)
    forward, backward = transition_matrices(logits, *masks, backward_keeps_forward_drops=not independent)
    for p in (forward, backward):
        assert p.shape == (2, 3, 5, 5)
        assert torch.isfinite(p).all() and (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 5))
    if edge_dropout == 0.5:  # dropped edges carry (numerically) no probability
        assert 0.3 < (forward < 1e-30).float().mean() < 0.7
    if edge_dropout == 0.9999999:  # a row that lost every edge walks uniformly instead of becoming NaN
        torch.testing.assert_close(forward, torch.full_like(forward, 0.2))
        torch.testing.assert_close(backward, torch.full_like(backward, 0.2))


@pytest.mark.parametrize(("independent", "backward_rate"), [(False, 1 - 0.9**2), (True, 0.1)])
def test_backward_drop_rate(independent: bool, backward_rate: float) -> None:
    # By default the backward walk loses the forward walk's dropped edges on top of its own.
    torch.manual_seed(0)
    logits = affinity_logits(_nodes(2, 8, 3, 64), temperature=0.07)
    drop_forward, drop_backward = edge_dropout_masks(logits, 0.1)
    forward, backward = transition_matrices(
        logits, drop_forward, drop_backward, backward_keeps_forward_drops=not independent
    )
    assert float((forward == 0).float().mean()) == pytest.approx(0.1, abs=0.01)
    assert float((backward == 0).float().mean()) == pytest.approx(backward_rate, abs=0.01)
    inherited = backward.transpose(-1, -2)[drop_forward] == 0
    assert bool(inherited.all()) != independent


def test_edge_masks_are_injectable_and_drawn_only_in_training() -> None:
    torch.manual_seed(0)
    task = CRW(encoder=SpaceToDepth(), embed_dim=None, edge_dropout=0.3)
    batch = {"video": torch.randn(1, 3, 4, 16, 16)}
    logits = affinity_logits(task.embed(batch["video"]), task.temperature)
    masks = edge_dropout_masks(logits, 0.3, generator=torch.Generator().manual_seed(1))
    first, second = task(batch, edge_masks=masks), task(batch, edge_masks=masks)
    assert torch.equal(first["loss"], second["loss"])
    expected, _, _ = cycle_loss(palindrome_walks(*transition_matrices(logits, *masks)))
    torch.testing.assert_close(first["loss"], expected)
    assert not torch.equal(task(batch)["loss"], task(batch)["loss"])  # drawn afresh each call


def test_edge_dropout_is_off_in_eval_mode() -> None:
    torch.manual_seed(0)
    task = CRW(encoder=SpaceToDepth(), embed_dim=None, edge_dropout=0.5).eval()
    batch = {"video": torch.randn(1, 3, 3, 16, 16)}
    first, second = task(batch), task(batch)
    assert torch.equal(first["loss"], second["loss"])


def _reference_walk_loss(nodes: torch.Tensor, temperature: float, shortest: int) -> tuple[float, float]:
    """The palindrome walk done slowly: push each start node's probability vector step by step."""
    b_size, _, t_size, n_size = nodes.shape
    losses, hits = [], []
    for k in range(shortest, t_size):  # cycle 0 → k → 0
        total, correct = 0.0, 0
        for b in range(b_size):
            def step(src: int, dst: int) -> torch.Tensor:
                sims = torch.tensor(
                    [[float(torch.dot(nodes[b, :, src, i], nodes[b, :, dst, j])) for j in range(n_size)]
                     for i in range(n_size)], dtype=torch.float64
                )
                return torch.softmax(sims / temperature, dim=1)

            path = list(range(k + 1)) + list(range(k - 1, -1, -1))
            for n in range(n_size):
                p = torch.zeros(n_size, dtype=torch.float64)
                p[n] = 1.0
                for src, dst in zip(path[:-1], path[1:]):
                    p = p @ step(src, dst)
                total += -math.log(float(p[n]))
                correct += int(int(p.argmax()) == n)
        losses.append(total / (b_size * n_size))
        hits.append(correct / (b_size * n_size))
    return sum(losses) / len(losses), sum(hits) / len(hits)


@pytest.mark.parametrize("shortest", [2, 1])
def test_walk_loss_matches_slow_reference(shortest: int) -> None:
    nodes = _nodes(2, 6, 5, 5, seed=3)
    forward, backward = transition_matrices(affinity_logits(nodes, 0.3))
    walks = palindrome_walks(forward, backward, shortest)
    assert len(walks) == 5 - shortest  # cycle lengths shortest..T-1
    loss, accuracy, _ = cycle_loss(walks)
    ref_loss, ref_accuracy = _reference_walk_loss(nodes, 0.3, shortest)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-4)
    assert float(accuracy) == pytest.approx(ref_accuracy)


def test_loss_reaches_its_floor_on_a_video_of_identical_frames() -> None:
    # Identical frames of noise: every node's best match in the next frame is its own copy (the
    # cells are distinct), so the return probability → 1 and the loss → 0 as τ → 0.
    torch.manual_seed(0)
    frame = torch.randn(2, 3, 1, 32, 32)
    still = {"video": frame.expand(-1, -1, 5, -1, -1)}
    losses = []
    for temperature in (0.5, 0.1, 0.01):
        task = CRW(encoder=SpaceToDepth(), embed_dim=None, temperature=temperature, edge_dropout=0.0)
        out = task(still)
        losses.append(float(out["loss"]))
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 1e-6
    assert float(out["walk_accuracy"]) == 1.0
    # Unrelated frames (independent noise) give no consistent cycle: well above the floor.
    shuffled = {"video": torch.randn(2, 3, 5, 32, 32)}
    assert float(task(shuffled)["loss"]) > 0.1


def test_bad_input_is_named() -> None:
    task = CRW(encoder=SpaceToDepth(), embed_dim=None)
    with pytest.raises(ValueError, match="T ≥ 3"):  # the shortest cycle, 0→1→2→1→0, needs 3 frames
        task({"video": torch.randn(1, 3, 2, 16, 16)})
    one_step = CRW(encoder=SpaceToDepth(), embed_dim=None, shortest_cycle=1)
    assert torch.isfinite(one_step({"video": torch.randn(1, 3, 2, 16, 16)})["loss"])
    with pytest.raises(ValueError, match="temperature"):
        CRW(encoder=SpaceToDepth(), temperature=0.0)
    with pytest.raises(ValueError, match="shortest_cycle"):
        CRW(encoder=SpaceToDepth(), shortest_cycle=0)
    with pytest.raises(ValueError, match="at least one walk"):
        cycle_loss([])
    with pytest.raises(ValueError, match="patch_jitter_scale"):
        CRW(encoder=SpaceToDepth(), patch_jitter_scale=(0.7, 1.2))
    with pytest.raises(ValueError, match="feature_dropout"):
        CRW(encoder=SpaceToDepth(), feature_dropout=1.0)


# ------------------------------------------------------------------------------------------------
# Patch jitter and feature dropout


def test_crop_boxes_follow_the_requested_area_and_aspect() -> None:
    boxes = random_crop_boxes(20000, 64, 64, (0.7, 0.9), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    left, top, right, bottom = boxes.unbind(1)
    w, h = right - left, bottom - top
    assert (left >= 0).all() and (top >= 0).all() and (right <= 64).all() and (bottom <= 64).all()
    area = w * h / 64**2
    assert float(area.min()) > 0.68 and float(area.max()) < 0.92  # 0.7-0.9, sides rounded to pixels
    assert float((w / h).min()) > 0.74 and float((w / h).max()) < 1.36
    # the same distribution as torchvision's RandomResizedCrop.get_params (whose w > 64 tries are redrawn)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(1, 64, 64)
    reference = torch.tensor(
        [RandomResizedCrop.get_params(image, [0.7, 0.9], [3 / 4, 4 / 3])[2:] for _ in range(20000)], dtype=torch.float
    )
    assert float((w * h).mean()) == pytest.approx(float(reference.prod(1).mean()), rel=0.01)
    assert float((w / h).mean()) == pytest.approx(float((reference[:, 1] / reference[:, 0]).mean()), rel=0.01)


def test_jitter_resamples_each_patch_inside_its_box() -> None:
    from torchvision.transforms.v2.functional import resized_crop

    patches = torch.randn(6, 3, 16, 16)
    jittered = jitter_patches(patches, generator=torch.Generator().manual_seed(4))
    boxes = random_crop_boxes(6, 16, 16, generator=torch.Generator().manual_seed(4)).long()
    assert jittered.shape == patches.shape
    for patch, out, (left, top, right, bottom) in zip(patches, jittered, boxes.tolist()):
        expected = resized_crop(patch, top, left, bottom - top, right - left, [16, 16], antialias=False)
        # equal to crop-then-resize away from the crop's edge, where roi_align blends in the next pixel
        torch.testing.assert_close(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5, rtol=1e-5)
    # the whole patch at aspect 1 is the identity
    torch.testing.assert_close(jitter_patches(patches, (1.0, 1.0), (1.0, 1.0)), patches)


def test_patches_are_jittered_in_training_only() -> None:
    torch.manual_seed(0)
    video = torch.randn(1, 3, 3, 32, 32)
    task = CRW(encoder=TinyFrameEncoder(), embed_dim=8, patch_size=16)
    assert not torch.equal(task.embed(video), task.embed(video))
    task.eval()
    assert torch.equal(task.embed(video), task.embed(video))
    off = CRW(encoder=task.encoder, embed_dim=8, patch_size=16, patch_jitter_scale=None)
    off.head = task.head
    torch.testing.assert_close(off.train().embed(video), task.embed(video))


def test_feature_dropout_is_off_by_default_and_in_eval() -> None:
    torch.manual_seed(0)
    video = torch.randn(1, 3, 3, 16, 16)
    plain = CRW(encoder=SpaceToDepth(), embed_dim=None)
    dropped = CRW(encoder=SpaceToDepth(), embed_dim=None, feature_dropout=0.5)
    assert torch.equal(plain.embed(video), plain.embed(video))
    assert not torch.allclose(dropped.embed(video), plain.embed(video))
    torch.testing.assert_close(dropped.eval().embed(video), plain.embed(video))


# ------------------------------------------------------------------------------------------------
# The periodic evaluator the engine calls while CRW (or MAST) trains: vidssl.eval.periodic


def _tiny_davis(root, num_sequences: int = 2, num_frames: int = 6, size: int = 64):
    """A DAVIS layout of static noise with one bright 24-px square moving 2 px per frame."""
    import numpy as np
    from PIL import Image

    from vidssl.datasets.formats import write_mask

    rng = np.random.default_rng(0)
    names = [f"seq{i}" for i in range(num_sequences)]
    for name in names:
        background = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        for t in range(num_frames):
            frame, mask = background.copy(), np.zeros((size, size), dtype=np.uint8)
            y, x = 8 + t, 8 + 2 * t
            frame[y : y + 24, x : x + 24] = (250, 220, 30)
            mask[y : y + 24, x : x + 24] = 1
            (root / "JPEGImages/480p" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", quality=95)
            write_mask(root / "Annotations/480p" / name / f"{t:05d}.png", mask)
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("\n".join(names) + "\n")
    return root


class _Writer:
    def __init__(self) -> None:
        self.images: dict[str, tuple] = {}

    def add_image(self, tag: str, image, step: int, dataformats: str = "CHW") -> None:
        self.images[tag] = (image.shape, step, dataformats)


class _Constant(nn.Module):
    """Features that say nothing: every cell the same vector."""

    out_channels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 4, x.shape[2] // 8, x.shape[3] // 8)


def test_periodic_evaluator_scores_propagation_and_draws_it(tmp_path) -> None:
    from vidssl.eval.periodic import PropagationEvaluator

    root = _tiny_davis(tmp_path)
    evaluator = PropagationEvaluator(root, max_sequences=1, overlay_frames=3, radius=3, n_context=2)
    writer = _Writer()
    # cells of raw pixels follow the bright square: most of it is tracked
    good = evaluator(CRW(encoder=SpaceToDepth(), embed_dim=None), step=7, writer=writer)
    assert set(good) == {"J&F-Mean", "J-Mean", "F-Mean"}
    assert good["J-Mean"] > 0.6 and good["J&F-Mean"] > 0.4  # measured 0.71 and 0.53 (F suffers at 64 px)
    assert writer.images == {"propagation/seq0": ((68, 200, 3), 7, "HWC")}  # 3 frames of 64 px, 2 px pads
    # features that cannot tell cells apart lose the object
    bad = evaluator(CRW(encoder=_Constant(), embed_dim=None), step=7, writer=None)
    assert bad["J&F-Mean"] < good["J&F-Mean"] - 0.3  # measured 0.0: every cell becomes background
    with pytest.raises(ValueError, match="max_sequences"):
        PropagationEvaluator(root, max_sequences=0)
