"""Dense Predictive Coding (Han, Xie & Zisserman, ICCV-W 2019).

A clip is cut into `num_seq` blocks of `seq_len` frames. The encoder turns every block into a spatial
feature map (its time axis pooled); a ConvGRU aggregates the observed blocks; a predictor φ rolls out
the feature maps of the next `pred_step` blocks, feeding each prediction back into the ConvGRU; a dense
InfoNCE asks every predicted (future step, position) vector to pick its true feature among every
(clip, step, position) of the batch.

The pieces MemDPC and CPC reuse (`block_clips`, `encode_blocks`, `rollout`, `dense_prediction_loss`,
`scheduled_pred_step`) are plain functions here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vidssl.encoders.heads import ConvGRU, orthogonal_init_
from vidssl.losses import dense_info_nce
from vidssl.monitors import embedding_monitors, similarity_gap

HEAD_INITS = ("default", "orthogonal")


def block_clips(video: Tensor, num_seq: int, name: str = "batch['video']") -> Tensor:
    """Every block of every clip as one clip: (B·N)×C×L×H×W, block n of clip b at row b·N + n.

    Inputs: video B×N×C×L×H×W (the block layout, `ClipTransform(blocks=N)`: a view, no copy) or
    B×C×(N·L)×H×W (cut here with a copy, as the official loaders never need to).
    """
    if video.ndim == 6 and video.shape[1] == num_seq:
        return video.flatten(0, 1)
    if video.ndim == 5 and video.shape[2] % num_seq == 0:
        return rearrange(video, "b c (n l) h w -> (b n) c l h w", n=num_seq)
    raise ValueError(
        f"{name} must be B×num_seq×C×L×H×W (ClipTransform.blocks=num_seq) or B×C×(num_seq·L)×H×W with "
        f"num_seq={num_seq}, got shape {tuple(video.shape)}"
    )


def encode_blocks(encoder: nn.Module, video: Tensor, num_seq: int) -> Tensor:
    """Feature map of every block, its time axis averaged (DPC pools the block's last T' steps).

    Inputs: video B×N×C×L×H×W or B×C×(N·L)×H×W (`block_clips`; N = num_seq, from `BlockSampler`).
    Outputs: B×N×D×H'×W'.
    """
    maps = encoder(block_clips(video, num_seq)).mean(dim=2)  # (B·N, D, H', W')
    return rearrange(maps, "(b n) d h w -> b n d h w", n=num_seq)


def rollout(
    aggregator: ConvGRU, predict: Callable[[Tensor], Tensor], context: Tensor, steps: int
) -> Tensor:
    """Aggregate the observed blocks, then predict `steps` future blocks, each fed back in turn.

    As in DPC, the aggregator reads rectified features (ReLU) while the predictions stay unbounded
    like the targets they are compared with.

    Inputs: context B×Nc×D×H×W (observed blocks); predict: hidden B×D×H×W -> prediction B×D×H×W.
    Outputs: B×steps×D×H×W.
    """
    _, hidden = aggregator(F.relu(context))  # hidden: every layer's last state
    predictions = []
    for step in range(steps):
        prediction = predict(hidden[-1])  # (B, D, H, W), from the top layer
        predictions.append(prediction)
        if step + 1 < steps:  # the last prediction needs no further context update
            _, hidden = aggregator(F.relu(prediction).unsqueeze(1), hidden)
    return torch.stack(predictions, dim=1)


def dense_prediction_loss(
    pred: Tensor, target: Tensor, *, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    """Dense InfoNCE: the positive of pred[b, k, :, y, x] is target[b, k, :, y, x]; every other
    (clip, step, position) of the batch is a negative. One batched matrix product (`dense_info_nce`).

    Inputs: pred, target B×K×D×H×W. Outputs: (loss, accuracy of the positive).
    """
    pred = rearrange(pred, "b k d h w -> b (k h w) d")
    target = rearrange(target, "b k d h w -> b (k h w) d")
    return dense_info_nce(pred, target, temperature=temperature, normalize=normalize)


@torch.no_grad()
def prediction_monitors(features: Tensor, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Health monitors of a predictive-coding step (`vidssl.monitors`): ``embedding_std`` and
    ``embedding_rankme`` of the blocks' pooled features, ``similarity_gap`` of the predictions against
    their true features (every other (clip, step, position) a negative, as the loss has them).

    Inputs: features B×N×D×H×W; pred, target B×K×D×H×W.
    """
    rows = "b k d h w -> (b k h w) d"
    return {**embedding_monitors(features.mean(dim=(-2, -1)).flatten(0, 1)),
            "similarity_gap": similarity_gap(rearrange(pred, rows), rearrange(target, rows))}


def scheduled_pred_step(schedule: Sequence[int], step: int, max_steps: int) -> int:
    """The curriculum's prediction horizon for the next step: `schedule` split into equal parts of
    the run (e.g. [1, 2, 3]: predict 1 block ahead in the first third, 3 in the last)."""
    return int(schedule[min(len(schedule) - 1, step * len(schedule) // max(max_steps, 1))])


def init_heads(name: str, heads: Sequence[nn.Module], init: str, gain: float) -> None:
    """Initialise the ConvGRU(s) and predictor: "default" keeps PyTorch's initialisation, "orthogonal"
    gives orthogonal weights scaled by `gain` and zero biases (the papers' code)."""
    if init not in HEAD_INITS:
        raise ValueError(f"{name}: head_init must be one of {HEAD_INITS}, got {init!r}")
    if init == "orthogonal":
        for head in heads:
            orthogonal_init_(head, gain)


def check_pred_steps(name: str, num_seq: int, pred_step: int, schedule: Sequence[int] | None) -> list[int]:
    """Validate the horizon(s) against `num_seq` (at least one observed block); return the schedule."""
    steps = list(schedule) if schedule else [pred_step]
    bad = [k for k in steps if not 1 <= k < num_seq]
    if bad:
        raise ValueError(f"{name}: pred_step values {bad} are outside [1, num_seq - 1] = [1, {num_seq - 1}]")
    return steps


class DPC(nn.Module):
    """DPC: encoder per block → ConvGRU over the past → φ rolls out the future → dense InfoNCE.

    The paper's defaults: 8 blocks × 5 frames at temporal stride 3, 128×128 crops, R2D3D-18 (a 4×4
    feature map), a one-layer ConvGRU with 1×1 kernels, pred_step 3 (5 observed blocks), φ = two 1×1
    convolutions with a ReLU between, plain dot-product scores (temperature 1, no normalisation). Its
    curriculum predicts further ahead from less context as training goes on: `pred_step_schedule`.

    Args:
        encoder: video encoder, `B×C×T×H×W -> B×D×T'×H'×W'` with `out_channels = D`.
        num_seq: blocks per clip (the sampler's `num_seq`).
        pred_step: future blocks predicted (K), when there is no schedule.
        pred_step_schedule: a curriculum, e.g. [1, 2, 3]: the run split into equal parts, each
            predicting that many blocks (every value in [1, num_seq - 1]); None: always `pred_step`.
        num_layers, kernel_size: of the ConvGRU.
        hidden_dropout: dropout on the ConvGRU's state at every time step (the paper's code: 0.1).
        head_init, head_init_gain: "default" (PyTorch's) or "orthogonal" (the paper's code: orthogonal
            weights with gain 1, zero biases) for the ConvGRU and φ.
        temperature, normalize: of the dense InfoNCE (the paper: 1.0, False).

    Inputs: batch["video"] B×num_seq×C×seq_len×H×W (the block layout) or B×C×(num_seq·seq_len)×H×W.
    Outputs: {"loss", "accuracy" (of the positive among all B·K·H'·W' candidates), "pred_step", and the
        health monitors "embedding_std", "embedding_rankme", "similarity_gap" (`prediction_monitors`)}.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        num_seq: int = 8,
        pred_step: int = 3,
        pred_step_schedule: Sequence[int] | None = None,
        num_layers: int = 1,
        kernel_size: int = 1,
        hidden_dropout: float = 0.1,
        head_init: str = "orthogonal",
        head_init_gain: float = 1.0,
        temperature: float = 1.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        steps = check_pred_steps("DPC", num_seq, pred_step, pred_step_schedule)
        if temperature <= 0:
            raise ValueError(f"DPC: temperature must be > 0, got {temperature}")
        self.encoder = encoder
        self.num_seq = num_seq
        self.pred_step_schedule = list(pred_step_schedule) if pred_step_schedule else None
        self.temperature = temperature
        self.normalize = normalize
        dim = encoder.out_channels
        self.aggregator = ConvGRU(
            dim, dim, kernel_size=kernel_size, num_layers=num_layers, hidden_dropout=hidden_dropout
        )
        self.predictor = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1))
        init_heads("DPC", [self.aggregator, self.predictor], head_init, head_init_gain)
        # A buffer, so that a resumed run continues the curriculum where the checkpoint left it.
        self.register_buffer("pred_step", torch.tensor(steps[0]))

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        if self.pred_step_schedule is not None:
            self.pred_step.fill_(scheduled_pred_step(self.pred_step_schedule, step, max_steps))

    @classmethod
    def evaluation_exports(cls, config: dict) -> dict:
        """The context read-out of the DPC downstream protocol: the ConvGRU ``aggregator`` (``config``: the
        task's model config, for its shape)."""
        return {"readout": {"kind": "context", "aggregators": ["aggregator"],
                            "kernel_size": int(config.get("kernel_size", 1)),
                            "num_layers": int(config.get("num_layers", 1))}}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        features = encode_blocks(self.encoder, batch["video"], self.num_seq)  # (B, N, D, H', W')
        k = int(self.pred_step)
        pred = rollout(self.aggregator, self.predictor, features[:, : self.num_seq - k], k)  # (B, K, D, H', W')
        target = features[:, self.num_seq - k :]
        loss, accuracy = dense_prediction_loss(pred, target, temperature=self.temperature, normalize=self.normalize)
        return {"loss": loss, "accuracy": accuracy, "pred_step": self.pred_step.float(),
                **prediction_monitors(features, pred, target)}
