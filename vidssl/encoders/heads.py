"""Heads that sit on an encoder: the ConvGRU aggregator of CPC/DPC and MLP / 1×1-conv projections."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["ConvGRUCell", "ConvGRU", "MLPHead", "orthogonal_init_"]


class ConvGRUCell(nn.Module):
    """One convolutional GRU step: the gates are convolutions over [input, hidden] feature maps.

    Inputs: x B×C_in×H×W, h B×C_h×H×W or None (zeros). Outputs: the new hidden state B×C_h×H×W.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvGRUCell needs an odd kernel_size (same padding), got {kernel_size}")
        self.hidden_channels = hidden_channels
        padding = kernel_size // 2
        # reset and update gates in one convolution, the candidate state in another (it sees r·h).
        self.gates = nn.Conv2d(input_channels + hidden_channels, 2 * hidden_channels, kernel_size, padding=padding)
        self.candidate = nn.Conv2d(input_channels + hidden_channels, hidden_channels, kernel_size, padding=padding)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[2:])
        reset, update = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * h + update * candidate


class ConvGRU(nn.Module):
    """A stack of ConvGRU cells run over time (DPC's aggregation function).

    Inputs: x B×T×C_in×H×W; hidden L×B×C_h×H×W or None (zeros), L = num_layers.
    Outputs: (output B×T×C_h×H×W — the top layer's state after each step,
              hidden L×B×C_h×H×W — every layer's state after the last step, as nn.GRU's h_n).
    `dropout` (if any) is applied to each layer's output sequence before the next layer.
    `hidden_dropout` (if any) is applied to every cell's new state at every time step, and the dropped
    state is what the next step, the next layer and the returned outputs see (DPC/MemDPC use 0.1).
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: int,
        *,
        kernel_size: int = 1,
        num_layers: int = 1,
        dropout: float = 0.0,
        hidden_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"ConvGRU needs num_layers >= 1, got {num_layers}")
        if not (0.0 <= dropout < 1.0 and 0.0 <= hidden_dropout < 1.0):
            raise ValueError(f"ConvGRU dropout and hidden_dropout must be in [0, 1), got {dropout}, {hidden_dropout}")
        self.input_channels = input_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.cells = nn.ModuleList(
            ConvGRUCell(input_channels if i == 0 else hidden_channels, hidden_channels, kernel_size)
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.hidden_dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: Tensor, hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.ndim != 5 or x.shape[2] != self.input_channels:
            raise ValueError(
                f"ConvGRU expects B×T×{self.input_channels}×H×W, got shape {tuple(x.shape)}"
            )
        if hidden is not None and hidden.shape[0] != self.num_layers:
            raise ValueError(f"ConvGRU hidden must be {self.num_layers}×B×C×H×W, got {tuple(hidden.shape)}")
        finals = []
        sequence = x
        for layer, cell in enumerate(self.cells):
            h = None if hidden is None else hidden[layer]
            states = []
            for t in range(sequence.shape[1]):
                h = self.hidden_dropout(cell(sequence[:, t], h))
                states.append(h)
            sequence = torch.stack(states, dim=1)  # (B, T, C_h, H, W)
            finals.append(h)
            if layer < self.num_layers - 1:
                sequence = self.dropout(sequence)
        return sequence, torch.stack(finals, dim=0)


def orthogonal_init_(module: nn.Module, gain: float = 1.0) -> nn.Module:
    """Orthogonal weights (scaled by `gain`) and zero biases for every convolution and linear layer in
    `module`, in place; returns `module`.

    The reset and update gates, which `ConvGRUCell` computes with one convolution, are initialised as two
    separate orthogonal matrices, as a cell with one convolution per gate would be (DPC/MemDPC init their
    ConvGRU and predictor this way: gain 1 in DPC, 0.1 in MemDPC).
    """
    joint_gates = {id(m.gates) for m in module.modules() if isinstance(m, ConvGRUCell)}
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            for block in m.weight.chunk(2 if id(m) in joint_gates else 1, dim=0):
                nn.init.orthogonal_(block, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class MLPHead(nn.Module):
    """Linear → norm → ReLU, repeated, then a final Linear (SimCLR/MoCo v2/SwAV projection heads).

    Inputs: x N×in_dim. Outputs: N×out_dim. num_layers counts Linear layers (1 = a single Linear);
    norm=None drops the normalisation.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        *,
        norm: Callable[[int], nn.Module] | None = nn.BatchNorm1d,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLPHead needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=norm is None))  # a norm's shift replaces the bias
            if norm is not None:
                layers.append(norm(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
