"""The attentive probe of V-JEPA's frozen evaluation (facebookresearch/vjepa2, `evals/video_classification_frozen`).

A frozen encoder's tokens go through an `AttentivePooler` (a few self-attention blocks, then one learned
query that cross-attends to every token) and a linear classifier. A video is read as ``segments`` clips
spread over its length, each in ``views`` spatial crops: the segments' tokens are concatenated (one
sequence per view), the probe scores every view, and the views' softmaxes are averaged (as
``run_one_epoch`` does). The official protocol trains a grid of probes at once over the same features,
5 learning rates × 4 weight decays (AdamW, cosine lr to 0, constant weight decay), and reports the best
probe's accuracy on the validation split: a figure **picked on the split it reports**. This module
returns that figure, labelled ``val_picked_top1``, and a **clean** one (``clean_top1``): the grid trained on
the training split without a held-out part, the probe picked on that part, its validation accuracy
reported (as DINOv3 evaluates).

Features are extracted once per (segment, view) and kept in memory: right for the corpora this
toolkit tests on; the official script re-extracts augmented clips every epoch instead (see
docs/methods/vjepa.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vidssl.datasets.dataset import collate_kept
from vidssl.encoders.vit_video import Block, Mlp

log = logging.getLogger(__name__)

__all__ = ["AttentivePooler", "AttentiveClassifier", "ViewCrop", "encoder_tokens", "extract_views",
           "train_probe_grid", "probe_accuracy", "attentive_probe", "OFFICIAL_LRS", "OFFICIAL_WDS"]

# configs/eval/vitg-384/ssv2.yaml (vjepa2 c2963a47433ecca0ad4f06ec28bcfa8cb5b5cefb): multihead_kwargs
OFFICIAL_LRS = (0.005, 0.003, 0.001, 0.0003, 0.0001)
OFFICIAL_WDS = (0.01, 0.1, 0.4, 0.8)


class CrossAttention(nn.Module):
    """Queries attend to the tokens (SDPA); no output projection, as the official block."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        b, n, c = q.shape
        q = self.q(q).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(b, x.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, x: Tensor) -> Tensor:
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """``depth - 1`` self-attention blocks over the tokens, then ``num_queries`` learned queries cross-attend.

    Inputs: tokens B×N×dim. Outputs: B×num_queries×dim.
    """

    def __init__(self, *, embed_dim: int, num_heads: int = 16, depth: int = 4, num_queries: int = 1,
                 mlp_ratio: float = 4.0, init_std: float = 0.02) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"attentive probe: {num_heads} heads do not divide the encoder width {embed_dim}")
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, eps=1e-5)
                                    for _ in range(depth - 1)) if depth > 1 else None
        nn.init.trunc_normal_(self.query_tokens, std=init_std, a=-2.0, b=2.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=init_std, a=-2.0, b=2.0)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():  # the official rescaling: block i by sqrt(2(i+1)), the cross block as the last
            last = 0
            for last, block in enumerate(self.blocks or []):
                block.attn.proj.weight.div_(math.sqrt(2.0 * (last + 1)))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * (last + 1)))
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * (last + 1)))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks or []:
            x = block(x)
        return self.cross_attention_block(self.query_tokens.expand(x.shape[0], -1, -1), x)


class AttentiveClassifier(nn.Module):
    """`AttentivePooler` with one query, then a linear layer. Inputs: B×N×dim. Outputs: logits B×num_classes."""

    def __init__(self, *, embed_dim: int, num_classes: int, num_heads: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.pooler = AttentivePooler(embed_dim=embed_dim, num_heads=num_heads, depth=depth)
        self.linear = nn.Linear(embed_dim, num_classes)  # PyTorch's initialisation, as the official classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.pooler(x).squeeze(1))


@dataclass(frozen=True)
class ViewCrop:
    """Evaluation view ``view`` of ``views``: resize the short side to ``size``, crop size×size at that place
    along the long side (3 views: start, centre, end; 1 view: the centre).

    Inputs: frames uint8 T×H×W×3. Outputs: float C×T×size×size (normalised).
    """

    size: int
    view: int = 0
    views: int = 1

    def __call__(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        from vidssl.datasets.transforms import normalize_video

        clip = TF.resize(frames.permute(0, 3, 1, 2), [self.size], antialias=True)  # T×3×H×W
        h, w = clip.shape[-2:]
        where = 0.5 if self.views == 1 else self.view / (self.views - 1)
        top, left = round(where * (h - self.size)), round(where * (w - self.size))
        clip = clip[..., top:top + self.size, left:left + self.size]
        return normalize_video(clip.permute(1, 0, 2, 3).float() / 255.0)


def encoder_tokens(encoder: nn.Module, video: Tensor) -> Tensor:
    """The encoder's tokens B×N×D: ``encoder.tokens`` where it has them (video ViTs), else its feature map
    B×D×… flattened."""
    if hasattr(encoder, "tokens"):
        return encoder.tokens(video)
    return encoder(video).flatten(2).transpose(1, 2)


@torch.no_grad()
def extract_views(encoder: nn.Module, datasets: Sequence[Sequence[Dataset]], *, batch_size: int,
                  num_workers: int = 0, device: str | torch.device = "cpu") -> tuple[list[Tensor], Tensor, list]:
    """Tokens of every video for every view, its segments concatenated.

    Args:
        datasets: ``datasets[segment][view]``, each a dataset of the same videos in the same order (the
            segment's clip position, the view's crop).
    Outputs: (one N×(segments·L)×D float32 tensor per view, labels N, the dropped (index, path, reason));
    a video any dataset could not read is left out of all.
    """
    encoder.to(device).eval()
    per = {}  # (segment, view) -> {index: tokens}
    labels: dict[int, int] = {}
    dropped = []
    for s, views in enumerate(datasets):
        for v, dataset in enumerate(views):
            tokens = {}
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_kept)
            for batch in loader:
                dropped += batch["dropped"]
                if "video" not in batch:
                    continue
                out = encoder_tokens(encoder, batch["video"].to(device)).float().cpu()
                for i, index in enumerate(batch["index"].tolist()):
                    tokens[index] = out[i]
                    labels[index] = int(batch["label"][i])
            per[s, v] = tokens
    common = sorted(set.intersection(*(set(t) for t in per.values())))
    if not common:
        raise ValueError("attentive probe: no video could be read in every segment and view")
    views = [torch.stack([torch.cat([per[s, v][i] for s in range(len(datasets))]) for i in common])
             for v in range(len(datasets[0]))]
    return views, torch.tensor([labels[i] for i in common]), sorted(set(dropped))


def _cosine_lr(lr: float, step: int, total: int) -> float:
    """The official WarmupCosineLRSchedule without warmup, final lr 0, after ``step`` (1-based) steps."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(1, total)))


def train_probe_grid(views: Sequence[Tensor], labels: Tensor, *, num_classes: int,
                     lrs: Sequence[float] = OFFICIAL_LRS, wds: Sequence[float] = OFFICIAL_WDS, epochs: int = 20,
                     batch_size: int = 16, num_heads: int = 16, depth: int = 4, seed: int = 0,
                     device: str | torch.device = "cpu") -> list[tuple[float, float, AttentiveClassifier]]:
    """Train one probe per (lr, wd) on the same batches, each with its own AdamW (every parameter decayed,
    as the official ``init_opt``), the loss of every view backpropagated (as ``run_one_epoch``).

    Inputs: views, each N×L×D tokens; labels N. Outputs: [(lr, wd, trained probe in eval mode)], wd-major
    as the official grid lists them.
    """
    torch.manual_seed(seed)
    dim = views[0].shape[-1]
    grid = [(lr, wd) for wd in wds for lr in lrs]
    probes = [AttentiveClassifier(embed_dim=dim, num_classes=num_classes, num_heads=num_heads, depth=depth).to(device)
              for _ in grid]
    optimizers = [torch.optim.AdamW(p.parameters(), lr=lr, weight_decay=wd) for p, (lr, wd) in zip(probes, grid)]
    n = labels.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total, step = epochs * per_epoch, 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            y = labels[index].to(device)
            xs = [v[index].to(device) for v in views]
            step += 1
            for probe, optimizer, (lr, _) in zip(probes, optimizers, grid):
                for group in optimizer.param_groups:
                    group["lr"] = _cosine_lr(lr, step, total)
                probe.train()
                for x in xs:
                    F.cross_entropy(probe(x), y).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return [(lr, wd, probe.eval()) for (lr, wd), probe in zip(grid, probes)]


@torch.no_grad()
def probe_accuracy(probe: nn.Module, views: Sequence[Tensor], labels: Tensor, *, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy (%) of the views' averaged softmax. Inputs: views N×L×D each; labels N."""
    correct = 0
    for start in range(0, labels.shape[0], batch_size):
        probs = sum(F.softmax(probe(v[start:start + batch_size].to(device)), dim=1) for v in views) / len(views)
        correct += int((probs.argmax(dim=1).cpu() == labels[start:start + batch_size]).sum())
    return 100.0 * correct / labels.shape[0]


def holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (kept, held out): ``fraction`` of every class (at least one where a class has two or more)."""
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        k = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held.append(members[:k])
        kept.append(members[k:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def checked_holdout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """`holdout_split`, refused in one line when it holds nothing out (no class has two clips)."""
    kept, held = holdout_split(labels, fraction, seed)
    if held.numel() == 0:
        raise ValueError(f"attentive probe: no class has two training clips ({len(labels)} clips, "
                         f"{len(labels.unique())} classes), so none can be held out to pick the clean "
                         "figure's probe; give each class two or more training clips")
    return kept, held


def attentive_probe(train: tuple[Sequence[Tensor], Tensor], test: tuple[Sequence[Tensor], Tensor], *,
                    num_classes: int, holdout: float = 0.1, **grid_options: Any) -> dict[str, Any]:
    """Both figures of the attentive probe, with every probe's accuracy.

    ``val_picked_top1``: the grid trained on the whole training split, the best test accuracy (the official
    script's figure: picked on the split it reports). ``clean_top1``: the grid trained without a held-out
    ``holdout`` fraction of the training split, the probe with the best held-out accuracy, its test accuracy.
    """
    (train_views, train_labels), (test_views, test_labels) = train, test
    device = grid_options.get("device", "cpu")
    kept, held = checked_holdout_split(train_labels, holdout, grid_options.get("seed", 0))
    official = train_probe_grid(train_views, train_labels, num_classes=num_classes, **grid_options)
    test_acc = [probe_accuracy(p, test_views, test_labels, device=device) for _, _, p in official]
    best = max(range(len(official)), key=test_acc.__getitem__)
    clean = train_probe_grid([v[kept] for v in train_views], train_labels[kept], num_classes=num_classes,
                             **grid_options)
    held_acc = [probe_accuracy(p, [v[held] for v in train_views], train_labels[held], device=device)
                for _, _, p in clean]
    pick = max(range(len(clean)), key=held_acc.__getitem__)
    clean_test = probe_accuracy(clean[pick][2], test_views, test_labels, device=device)
    return {
        "val_picked_top1": test_acc[best],
        "val_picked_lr": official[best][0], "val_picked_wd": official[best][1],
        "clean_top1": clean_test,
        "clean_lr": clean[pick][0], "clean_wd": clean[pick][1], "clean_holdout_top1": held_acc[pick],
        "holdout_videos": int(held.numel()),
        "grid": [{"lr": lr, "wd": wd, "test_top1": acc, "holdout_top1": h}
                 for (lr, wd, _), acc, h in zip(official, test_acc, held_acc)],
    }
