"""ConvGRU, MLP and 1×1-conv heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidssl.encoders.heads import ConvGRU, ConvGRUCell, MLPHead


def test_convgru_shapes_and_state():
    torch.manual_seed(0)
    gru = ConvGRU(8, 6, kernel_size=3, num_layers=2)
    x = torch.randn(2, 5, 8, 4, 4)  # B×T×C×H×W
    output, hidden = gru(x)
    assert output.shape == (2, 5, 6, 4, 4)
    assert hidden.shape == (2, 2, 6, 4, 4)  # layers × B × C × H × W
    torch.testing.assert_close(output[:, -1], hidden[-1])  # the top layer's last output is its state


def test_convgru_matches_a_step_by_step_reference():
    torch.manual_seed(0)
    gru = ConvGRU(4, 3, kernel_size=1, num_layers=2)
    x = torch.randn(2, 4, 4, 3, 3)
    output, hidden = gru(x)
    # Reference: run the cells by hand, layer by layer; the first layer's states feed the second.
    h0 = h1 = None
    top = []
    for t in range(x.shape[1]):
        h0 = gru.cells[0](x[:, t], h0)
        h1 = gru.cells[1](h0, h1)
        top.append(h1)
    torch.testing.assert_close(output, torch.stack(top, dim=1))
    torch.testing.assert_close(hidden, torch.stack([h0, h1]))


def test_convgru_resumes_from_a_hidden_state():
    torch.manual_seed(0)
    gru = ConvGRU(4, 3, num_layers=2)
    x = torch.randn(2, 6, 4, 2, 2)
    full, full_hidden = gru(x)
    first, hidden = gru(x[:, :4])
    second, second_hidden = gru(x[:, 4:], hidden)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full)
    torch.testing.assert_close(second_hidden, full_hidden)


def test_convgru_cell_update_gate_interpolates():
    # With every gate weight zero, the update gate is sigmoid(0) = 1/2 and the candidate tanh(0) = 0:
    # the new state is half the old one.
    cell = ConvGRUCell(2, 2)
    for p in cell.parameters():
        nn.init.zeros_(p)
    h = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(cell(torch.randn(1, 2, 3, 3), h), h / 2)


def test_convgru_gradients_flow_and_bad_input():
    gru = ConvGRU(4, 3)
    output, _ = gru(torch.randn(2, 3, 4, 2, 2))
    output.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gru.parameters())
    with pytest.raises(ValueError, match="B×T×4×H×W"):
        gru(torch.randn(2, 4, 2, 2))


def test_mlp_head_layers():
    torch.manual_seed(0)
    head = MLPHead(16, 32, 8, 3)
    assert [type(m) for m in head.layers] == [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear
    ]
    assert head(torch.randn(4, 16)).shape == (4, 8)
    single = MLPHead(16, 32, 8, 1)
    assert len(single.layers) == 1 and single(torch.randn(4, 16)).shape == (4, 8)
    plain = MLPHead(in_dim=16, hidden_dim=32, out_dim=8, norm=None)
    assert [type(m) for m in plain.layers] == [nn.Linear, nn.ReLU, nn.Linear]


def test_convgru_hidden_dropout_drops_every_state_and_only_in_training():
    torch.manual_seed(0)
    gru = ConvGRU(4, 8, hidden_dropout=0.5)
    x = torch.randn(2, 3, 4, 3, 3)
    gru.train()
    output, hidden = gru(x)
    # Every step's state is dropped (exact zeros, about half of them), and the returned state is the dropped one.
    for t in range(3):
        zeros = (output[:, t] == 0).float().mean()
        assert 0.3 < zeros < 0.7
    torch.testing.assert_close(hidden[-1], output[:, -1])
    # The next step reads the dropped state: replaying the cell on it reproduces the sequence.
    seen = []
    gru.hidden_dropout.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    output, _ = gru(x)
    torch.testing.assert_close(gru.cells[0](x[:, 1], seen[0][1]), seen[1][0])
    gru.eval()
    plain = ConvGRU(4, 8)
    plain.load_state_dict(gru.state_dict())
    torch.testing.assert_close(gru(x)[0], plain.eval()(x)[0])
    with pytest.raises(ValueError, match="hidden_dropout"):
        ConvGRU(4, 8, hidden_dropout=1.0)


def test_orthogonal_init_per_gate_with_gain_and_zero_biases():
    from vidssl.encoders.heads import orthogonal_init_

    torch.manual_seed(0)
    head = nn.Sequential(ConvGRU(6, 6), nn.Conv2d(6, 6, 1))
    orthogonal_init_(head, gain=0.1)
    cell = head[0].cells[0]
    for weight in (*cell.gates.weight.chunk(2, 0), cell.candidate.weight, head[1].weight):
        w = weight.flatten(1)  # (out, in): rows orthonormal times the gain
        torch.testing.assert_close(w @ w.T, 0.01 * torch.eye(w.shape[0]), atol=1e-6, rtol=0)
    for bias in (cell.gates.bias, cell.candidate.bias, head[1].bias):
        assert torch.equal(bias, torch.zeros_like(bias))
