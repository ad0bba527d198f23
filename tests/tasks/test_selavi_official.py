"""SeLaVi against the authors' code, offline: fixtures recorded by tests/fixtures/selavi/record.py from
facebookresearch/selavi (see OFFICIAL.md there). Same labels from the same scores (Sinkhorn to
tolerance), the same head outputs on copied weights, the same loss, the same modality alignment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidssl.losses import sinkhorn_knopp, sinkhorn_to_tolerance
from vidssl.tasks.selavi.heads import cluster_head, combined_scores, stream_losses
from vidssl.tasks.selavi.labelling import alignment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "selavi"


def load(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


SINKHORN = load("sinkhorn.pt")


@pytest.mark.parametrize("case", sorted(SINKHORN))
def test_relabelling_gives_the_official_labels_and_iteration_count(case: str) -> None:
    data = SINKHORN[case]
    logits = {"video": [data["video_logits"].double()], "audio": [data["audio_logits"].double()]}
    scores = combined_scores(logits, dtype=torch.float64)[0]
    codes, iterations = sinkhorn_to_tolerance(scores, epsilon=1 / 20, tolerance=0.1, max_iterations=2000)
    assert iterations == int(data["iterations"])
    assert torch.equal(codes.argmax(1), data["labels"])


def test_a_few_fixed_iterations_do_not_give_the_official_labels() -> None:
    """The fixtures can tell a converged Sinkhorn from the SwAV-style 3 iterations."""
    data = SINKHORN["peaked"]
    scores = combined_scores({"video": [data["video_logits"].double()], "audio": [data["audio_logits"].double()]},
                             dtype=torch.float64)[0]
    labels = sinkhorn_knopp(scores, 0.05, 3).argmax(1)
    assert (labels != data["labels"]).float().mean() > 0.05


HEADS = load("heads.pt")


def _official_head_keys(state: dict) -> dict:
    """MLPv2's block_forward (Flatten, Dropout, Linear, Unsqueeze, BN, Flatten, ReLU, Dropout, Linear)
    to cluster_head's (Dropout, Linear, BN, ReLU, Dropout, Linear)."""
    moved = {"block_forward.2.": "1.", "block_forward.4.": "2.", "block_forward.8.": "5."}
    out = {}
    for key, value in state.items():
        prefix = next(p for p in moved if key.startswith(p))
        out[moved[prefix] + key[len(prefix):]] = value
    return out


def test_head_gives_the_official_outputs_on_copied_weights() -> None:
    head = cluster_head(16, 8, hidden=512, dropout=0.3)
    head.load_state_dict(_official_head_keys(HEADS["state"]))
    torch.testing.assert_close(head.eval()(HEADS["features"]), HEADS["eval_out"], rtol=1e-5, atol=1e-6)
    no_dropout = cluster_head(16, 8, hidden=512, dropout=0.0)
    no_dropout.load_state_dict(_official_head_keys(HEADS["state"]))
    torch.testing.assert_close(no_dropout.train()(HEADS["features"]), HEADS["train_out_no_dropout"],
                               rtol=1e-5, atol=1e-6)


def test_loss_is_the_official_loss() -> None:
    logits = {"video": list(HEADS["loss_logits_video"]), "audio": list(HEADS["loss_logits_audio"])}
    labels = list(HEADS["loss_labels"].T)
    losses = stream_losses(logits, labels)
    loss = torch.stack(list(losses.values())).mean()
    assert float(loss) == pytest.approx(float(HEADS["loss"]), rel=1e-6)


def test_alignment_finds_the_official_permutation() -> None:
    order = alignment(HEADS["align_probs_video"], HEADS["align_probs_audio"])
    assert torch.equal(order, HEADS["align_order"])
    # and it undoes the shuffle: the aligned audio predictions are closer to the video ones
    aligned = HEADS["align_probs_audio"][:, order]
    assert F.mse_loss(aligned, HEADS["align_probs_video"]) < F.mse_loss(HEADS["align_probs_audio"],
                                                                        HEADS["align_probs_video"])
