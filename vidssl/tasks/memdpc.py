"""Memory-augmented Dense Predictive Coding (Han, Xie & Zisserman, ECCV 2020).

DPC's pipeline (blocks → encoder → ConvGRU → rollout → dense InfoNCE), but the predictor does not emit
a feature directly: it addresses a learnable compressive memory of `memory_size` slots with a softmax
over the slots, and the prediction is the addressed mixture of memory entries. The future is uncertain;
the memory lets one prediction spread its weight over several plausible futures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vidssl.encoders.heads import ConvGRU
from vidssl.monitors import slot_usage
from vidssl.tasks.dpc import (
    check_pred_steps,
    dense_prediction_loss,
    encode_blocks,
    init_heads,
    prediction_monitors,
    rollout,
    scheduled_pred_step,
)


class MemDPC(nn.Module):
    """MemDPC: DPC whose predictor reads a learnable memory bank.

    The paper's defaults: 8 blocks × 5 frames at temporal stride 3, 128×128 crops, R2D3D-18 (4×4
    maps), pred_step 3, a memory of 1024 slots with the feature width, addressing softmax at
    temperature 1, plain dot-product scores (temperature 1, no normalisation), and the bidirectional
    form: a second ConvGRU reads the blocks in reverse and predicts the past from the same memory and
    predictor; the two losses are summed.

    Args:
        encoder: video encoder, `B×C×T×H×W -> B×D×T'×H'×W'` with `out_channels = D`.
        num_seq: blocks per clip (the sampler's `num_seq`).
        pred_step: future blocks predicted (K), when there is no schedule.
        pred_step_schedule: curriculum as in `DPC` (the run split into equal parts); None: `pred_step`.
        memory_size: memory slots M.
        memory_temperature: the addressing softmax is over logits / memory_temperature.
        bidirectional: also predict backwards in time with a second ConvGRU.
        num_layers, kernel_size: of the ConvGRU(s).
        hidden_dropout: dropout on the ConvGRU states at every time step (the paper's code: 0.1).
        head_init, head_init_gain: "default" (PyTorch's) or "orthogonal" (the paper's code: orthogonal
            weights with gain 0.1, zero biases) for the ConvGRU(s) and the addresser.
        temperature, normalize: of the dense InfoNCE.

    Inputs: batch["video"] B×num_seq×C×seq_len×H×W (the block layout) or B×C×(num_seq·seq_len)×H×W.
    Outputs: {"loss", "accuracy" (of the positive, averaged over directions), "pred_step",
        "memory_entropy" (mean entropy of the addressing, in nats: log M = uniform, 0 = one slot),
        "memory_used" (fraction of slots whose mean weight over the batch's reads is at least a tenth of
        the uniform 1/M), "memory_usage_entropy" (entropy of that mean usage, nats), and DPC's
        `prediction_monitors` (the gap averaged over the two directions)}.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        num_seq: int = 8,
        pred_step: int = 3,
        pred_step_schedule: Sequence[int] | None = None,
        memory_size: int = 1024,
        memory_temperature: float = 1.0,
        bidirectional: bool = True,
        num_layers: int = 1,
        kernel_size: int = 1,
        hidden_dropout: float = 0.1,
        head_init: str = "orthogonal",
        head_init_gain: float = 0.1,
        temperature: float = 1.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        steps = check_pred_steps("MemDPC", num_seq, pred_step, pred_step_schedule)
        if memory_size < 1:
            raise ValueError(f"MemDPC: memory_size must be >= 1, got {memory_size}")
        if memory_temperature <= 0 or temperature <= 0:
            raise ValueError(
                f"MemDPC: temperatures must be > 0, got memory_temperature={memory_temperature}, "
                f"temperature={temperature}"
            )
        self.encoder = encoder
        self.num_seq = num_seq
        self.pred_step_schedule = list(pred_step_schedule) if pred_step_schedule else None
        self.memory_temperature = memory_temperature
        self.temperature = temperature
        self.normalize = normalize
        dim = encoder.out_channels
        self.memory = nn.Parameter(torch.randn(memory_size, dim))  # (M, D), as the paper initialises it
        gru = dict(kernel_size=kernel_size, num_layers=num_layers, hidden_dropout=hidden_dropout)
        self.aggregator = ConvGRU(dim, dim, **gru)
        self.aggregator_backward = ConvGRU(dim, dim, **gru) if bidirectional else None
        # φ ends in one logit per memory slot (a 1×1 conv: addressing is per position).
        self.addresser = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, memory_size, 1)
        )
        heads = [self.aggregator, self.addresser] + ([self.aggregator_backward] if bidirectional else [])
        init_heads("MemDPC", heads, head_init, head_init_gain)
        self.register_buffer("pred_step", torch.tensor(steps[0]))  # restored on resume, like DPC's

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        if self.pred_step_schedule is not None:
            self.pred_step.fill_(scheduled_pred_step(self.pred_step_schedule, step, max_steps))

    def address(self, hidden: Tensor) -> Tensor:
        """Softmax weights over the memory slots at every position. Inputs: B×D×H×W. Outputs: B×M×H×W."""
        return torch.softmax(self.addresser(hidden) / self.memory_temperature, dim=1)

    def read(self, weights: Tensor) -> Tensor:
        """The addressed mixture of memory entries. Inputs: B×M×H×W. Outputs: B×D×H×W."""
        return torch.einsum("bmhw,md->bdhw", weights, self.memory)

    def _direction(self, features: Tensor, aggregator: ConvGRU, k: int, reads: list[Tensor] | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Loss, accuracy, addressing entropy and `prediction_monitors` of predicting the last k blocks of
        `features`; every addressing distribution (rows of M weights, detached) is appended to `reads`."""
        entropies = []

        def predict(hidden: Tensor) -> Tensor:
            weights = self.address(hidden)  # (B, M, H, W)
            entropies.append(-(weights * weights.clamp_min(1e-12).log()).sum(1).mean().detach())
            if reads is not None:
                reads.append(weights.detach().movedim(1, -1).flatten(0, -2))  # (B·H·W, M)
            return self.read(weights)

        pred = rollout(aggregator, predict, features[:, : self.num_seq - k], k)  # (B, K, D, H, W)
        target = features[:, self.num_seq - k :]
        loss, accuracy = dense_prediction_loss(pred, target, temperature=self.temperature, normalize=self.normalize)
        return loss, accuracy, torch.stack(entropies).mean(), prediction_monitors(features, pred, target)

    @classmethod
    def evaluation_exports(cls, config: dict) -> dict:
        """The context read-out of the MemDPC downstream protocol: the forward ConvGRU ``aggregator`` and,
        when bidirectional (the default), ``aggregator_backward`` (``config``: the task's model config)."""
        backward = ["aggregator_backward"] if config.get("bidirectional", True) else []
        return {"readout": {"kind": "context", "aggregators": ["aggregator", *backward],
                            "kernel_size": int(config.get("kernel_size", 1)),
                            "num_layers": int(config.get("num_layers", 1))}}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        features = encode_blocks(self.encoder, batch["video"], self.num_seq)  # (B, N, D, H', W')
        k = int(self.pred_step)
        reads: list[Tensor] = []
        loss, accuracy, entropy, monitors = self._direction(features, self.aggregator, k, reads)
        if self.aggregator_backward is not None:
            # Time reversed: the last blocks become the context and the first ones the targets.
            loss_b, accuracy_b, entropy_b, monitors_b = self._direction(features.flip(1), self.aggregator_backward,
                                                                        k, reads)
            loss = loss + loss_b  # summed, as the paper's code does
            accuracy, entropy = (accuracy + accuracy_b) / 2, (entropy + entropy_b) / 2
            monitors["similarity_gap"] = (monitors["similarity_gap"] + monitors_b["similarity_gap"]) / 2
        used, usage_entropy = slot_usage(torch.cat(reads))
        return {"loss": loss, "accuracy": accuracy, "pred_step": self.pred_step.float(), "memory_entropy": entropy,
                "memory_used": used, "memory_usage_entropy": usage_entropy, **monitors}
