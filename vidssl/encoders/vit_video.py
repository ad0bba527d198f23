"""Video Vision Transformers as V-JEPA (facebookresearch/vjepa2, `src/models/vision_transformer.py`) builds them.

A clip B×3×T×H×W is cut into tubelets of ``tubelet × patch × patch`` pixels (a strided 3D convolution),
each a token; tokens are ordered time-major (t, then row, then column), as the official code orders
them, so mask indices mean the same thing in both. Positions come either from a fixed 3D sin-cos table
added to the tokens (``use_rope=False``) or from 3D rotary embeddings inside every attention layer
(``use_rope=True``, the V-JEPA 2 ``*_rope`` models). Attention is PyTorch's
``scaled_dot_product_attention``; ``activation_checkpointing`` recomputes each block in the backward pass.

The parameter names equal the official ones (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``norm``...),
so an official state dict loads once its ``module.``/``backbone.`` prefixes are stripped
(`vidssl.convert.vjepa`). The blocks are written here rather than taken from timm: timm's ``Block`` has
no rotary attention that rotates by token index the way V-JEPA's does (see ``rotate``).

Encoder contract: ``forward(x) -> B×D×T'×H'×W'`` (the normed last layer); ``tokens(x, masks)`` gives the
B×N×D tokens the task and the attentive probe read, optionally only those at ``masks`` (B×K indices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["VideoViT", "Block", "sincos_3d", "rotate", "vit_video_t", "vit_video_s", "vit_video_b", "vit_video_l",
           "vit_video_h", "vit_video_g", "SIZES"]

# (embed_dim, depth, num_heads, mlp_ratio) of the official sizes (vision_transformer.py's vit_* factories);
# "g" is vit_giant_xformers (22 heads), the V-JEPA 2 giant whose weights are released.
SIZES: dict[str, tuple[int, int, int, float]] = {
    "t": (192, 12, 3, 4.0),
    "s": (384, 12, 6, 4.0),
    "b": (768, 12, 12, 4.0),
    "l": (1024, 24, 16, 4.0),
    "h": (1280, 32, 16, 4.0),
    "g": (1408, 40, 22, 48 / 11),
}


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """sin | cos of positions × 10000^(-2i/dim): (M,) float64 → M×dim."""
    if dim % 2:
        raise ValueError(f"sin-cos position encoding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_3d(dim: int, depth: int, height: int, width: int, *, uniform_power: bool = False) -> Tensor:
    """The fixed 3D sin-cos table of V-JEPA, in float64: (depth·height·width)×dim, time-major.

    Without ``uniform_power`` time takes half the channels and height and width a quarter each; with it
    each axis takes ceil(dim/6)·2 channels and the table is cut to ``dim`` (pos_embs.py).
    """
    d, h, w = torch.meshgrid(torch.arange(depth), torch.arange(height), torch.arange(width), indexing="ij")
    if uniform_power:
        dd = hd = wd = int(math.ceil(dim / 6) * 2)
    else:
        hd = wd = dim // 4
        dd = dim // 2
    table = torch.cat([_sincos_1d(dd, d.flatten()), _sincos_1d(hd, h.flatten()), _sincos_1d(wd, w.flatten())], 1)
    return table[:, :dim]


def rotate(x: Tensor, positions: Tensor) -> Tensor:
    """Rotary embedding of one axis, as V-JEPA applies it: x (…×N×C, C even) rotated by ``positions``.

    Channel pairs (2i, 2i+1) are rotated, but the angle of channel j is that of frequency j mod C/2 (the
    official code tiles the frequencies instead of repeating each twice, a known quirk it keeps for its
    released weights; so must we). Inputs: x B×heads×N×C, positions N or B×heads×N. Outputs: like x.
    """
    c = x.shape[-1]
    omega = 1.0 / 10000 ** (torch.arange(c // 2, dtype=x.dtype, device=x.device) / (c / 2.0))
    angles = positions.to(x.dtype)[..., None] * omega  # (..., N, C/2)
    angles = torch.cat([angles, angles], dim=-1)
    pairs = x.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * angles.cos() + swapped * angles.sin()


def token_positions(index: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Time, row and column of time-major token indices on a height×width patch grid."""
    per_frame = height * width
    t = index // per_frame
    rest = index - t * per_frame
    row = rest // width
    return t, row, rest - row * width


class Attention(nn.Module):
    """Multi-head self-attention (SDPA), optionally with V-JEPA's 3D rotary embedding of q and k.

    With ``rope`` the first ⌊head_dim/3⌋ rounded-down-to-even channels of each head rotate with the time
    index, the next as many with the row, the next with the column; the rest stay as they are.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, rope: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.axis_dim = 2 * ((self.head_dim // 3) // 2)

    def _rotate(self, x: Tensor, axes: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        s = self.axis_dim
        parts = [rotate(x[..., i * s:(i + 1) * s], pos) for i, pos in enumerate(axes)]
        return torch.cat(parts + [x[..., 3 * s:]], dim=-1)

    def forward(self, x: Tensor, axes: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """x B×N×dim; axes: each token's (time, row, column), each N or B×1×N (rope only)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = self._rotate(q, axes), self._rotate(k, axes)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6 (the
    encoders and the predictor; the attentive probe's blocks use PyTorch's default 1e-5)."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 rope: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, axes: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), axes)
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module, blocks: nn.ModuleList, std: float = 0.02) -> None:
    """V-JEPA's initialisation: normal(0, std) linear and convolution weights, zero biases, unit norms; each
    block's attention and MLP output projections divided by sqrt(2·layer).

    The official code truncates the normal at ±2 (absolute): 100 standard deviations of 0.02, which no
    draw reaches, so a plain normal has the same distribution and costs one pass instead of five (ViT-L
    builds in a third of the time)."""
    for m in module.modules():  # every parameter of these modules is set: they may come uninitialised
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def run_blocks(blocks: nn.ModuleList, x: Tensor, axes: tuple[Tensor, Tensor, Tensor] | None,
               use_checkpoint: bool) -> Tensor:
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, axes, use_reentrant=False)
        else:
            x = block(x, axes)
    return x


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x B×N×D at index B×K → B×K×D."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class VideoViT(nn.Module):
    """A video ViT: tubelet embedding, sin-cos or rotary positions, pre-norm blocks, a final LayerNorm.

    Args:
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer's shape.
        img_size, num_frames: the clip size the sin-cos table is built for (other sizes interpolate it
            trilinearly, as the official model does); with RoPE they only set ``grid`` for reference.
        patch_size, tubelet_size: one token covers tubelet_size frames × patch_size² pixels (2×16×16).
        use_rope: 3D rotary embeddings in every attention layer instead of the sin-cos table.
        uniform_power: split the sin-cos channels equally between time, height and width.
        activation_checkpointing: recompute each block during the backward pass (less memory).

    Inputs: x B×3×T×H×W. Outputs: forward → B×D×T/tubelet×H/patch×W/patch; tokens → B×N×D (or B×K×D).
    """

    def __init__(self, *, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                 tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.embed_dim = self.out_channels = embed_dim
        self.num_heads = num_heads
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.img_size, self.num_frames = img_size, num_frames
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.use_rope, self.uniform_power = use_rope, uniform_power
        self.activation_checkpointing = activation_checkpointing
        with torch.device("meta"):  # allocated once below: PyTorch's default initialisation would be overwritten
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv3d(3, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                                              stride=(tubelet_size, patch_size, patch_size))
            self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                              rope=use_rope) for _ in range(depth))
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.to_empty(device="cpu")
        init_vit_weights(self, self.blocks)
        if use_rope:
            self.pos_embed = None
        else:
            table = sincos_3d(embed_dim, *self.grid, uniform_power=uniform_power).float()
            self.register_buffer("pos_embed", table.unsqueeze(0))

    def token_grid(self, x: Tensor) -> tuple[int, int, int]:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"VideoViT expects a clip B×3×T×H×W, got shape {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"VideoViT: clip {t}×{h}×{w} is not a whole number of "
                             f"{self.tubelet_size}×{self.patch_size}×{self.patch_size} tubelets")
        return t // self.tubelet_size, h // self.patch_size, w // self.patch_size

    def positions(self, grid: tuple[int, int, int]) -> Tensor:
        """The sin-cos table for a token grid: the stored one, cut in time or trilinearly resized."""
        table = self.pos_embed
        if grid == self.grid:
            return table
        if grid[1:] == self.grid[1:] and grid[0] < self.grid[0]:
            return table[:, : grid[0] * grid[1] * grid[2]]
        volume = table.reshape(1, *self.grid, -1).permute(0, 4, 1, 2, 3)
        scale = tuple(g / s for g, s in zip(grid, self.grid))
        volume = F.interpolate(volume, scale_factor=scale, mode="trilinear")
        return volume.permute(0, 2, 3, 4, 1).reshape(1, -1, table.shape[-1])

    def tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Normed last-layer tokens: x B×3×T×H×W → B×N×D, or those at ``masks`` (B×K indices) → B×K×D."""
        grid = self.token_grid(x)
        z = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            z = z + self.positions(grid)
        axes = None
        if masks is not None:
            z = gather_tokens(z, masks)
        if self.use_rope:
            index = masks.unsqueeze(1) if masks is not None else torch.arange(z.shape[1], device=z.device)
            axes = token_positions(index, grid[1], grid[2])
        z = run_blocks(self.blocks, z, axes, self.activation_checkpointing)
        return self.norm(z)

    def forward(self, x: Tensor) -> Tensor:
        t, h, w = self.token_grid(x)
        z = self.tokens(x)
        return z.transpose(1, 2).reshape(z.shape[0], -1, t, h, w)


def vit_video_t(*, embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
                qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                activation_checkpointing: bool = False) -> VideoViT:
    """ViT-tiny/16 video encoder: 192 wide, 12 blocks, 3 heads (`VideoViT` for the arguments)."""
    return VideoViT(**locals())


def vit_video_s(*, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                activation_checkpointing: bool = False) -> VideoViT:
    """ViT-small/16 video encoder: 384 wide, 12 blocks, 6 heads (`VideoViT` for the arguments)."""
    return VideoViT(**locals())


def vit_video_b(*, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                activation_checkpointing: bool = False) -> VideoViT:
    """ViT-base/16 video encoder: 768 wide, 12 blocks, 12 heads (`VideoViT` for the arguments)."""
    return VideoViT(**locals())


def vit_video_l(*, embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                activation_checkpointing: bool = False) -> VideoViT:
    """ViT-large/16 video encoder: 1024 wide, 24 blocks, 16 heads (`VideoViT` for the arguments)."""
    return VideoViT(**locals())


def vit_video_h(*, embed_dim: int = 1280, depth: int = 32, num_heads: int = 16, mlp_ratio: float = 4.0,
                qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                activation_checkpointing: bool = False) -> VideoViT:
    """ViT-huge/16 video encoder: 1280 wide, 32 blocks, 16 heads (`VideoViT` for the arguments)."""
    return VideoViT(**locals())


def vit_video_g(*, embed_dim: int = 1408, depth: int = 40, num_heads: int = 22, mlp_ratio: float = 48 / 11,
                qkv_bias: bool = True, img_size: int = 224, num_frames: int = 16, patch_size: int = 16,
                tubelet_size: int = 2, use_rope: bool = False, uniform_power: bool = False,
                activation_checkpointing: bool = False) -> VideoViT:
    """ViT-giant/16 (vit_giant_xformers) video encoder: 1408 wide, 40 blocks, 22 heads, MLP ratio 48/11."""
    return VideoViT(**locals())
