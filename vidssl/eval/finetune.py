"""The DPC/MemDPC downstream protocol: the context read-out, and fine-tuning the whole network.

The papers' downstream model (TengdaHan/DPC `eval/model_3d_lc.py`, TengdaHan/MemDPC `eval/model_lc.py`) reads
a clip cut into `num_seq` blocks: the encoder's map of every block, rectified (ReLU) and averaged over its
time axis, goes through the ConvGRU (MemDPC: a forward and a backward one, concatenated); the last state is
averaged over space. For action recognition that context passes batch norm, dropout (DPC 0.5, MemDPC 0.9)
and a linear layer, and the whole network is trained (Adam, lr 1e-3, weight decay 1e-3); a test video's
class is the argmax of the softmax averaged over several of its clips.

- `ContextReadout`: encoder + ConvGRU(s) as one module, `B×C×(N·L)×H×W -> B×D'×H'×W'` (D' = D × directions),
  so that `extract_features` (retrieval, linear probe) reads the context instead of the pooled encoder.
- `ContextClassifier`: the read-out, batch norm, dropout and the linear classifier.
- `finetune`: trains a `ContextClassifier` and reports the multi-clip test accuracy; its halves
  `train_classifier` and `score_clips` (per-video softmax), for two-stream fine-tuning.
- `PositionedSampler`, `clip_positions`: deterministic clips at given places of a video.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vidssl.run import RANDOM_INIT_SEED, Checkpoint
from vidssl.datasets.dataset import collate_kept
from vidssl.datasets.sampling import ClipTooShortError
from vidssl.encoders.heads import ConvGRU, orthogonal_init_

READOUTS = ("encoder", "context")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PositionedSampler:
    """`num_frames` frames `stride` apart, starting at `position` of the video's slack (0: the first frame,
    1: the last possible start). A deterministic sampler (the `VideoDataset` sampler contract)."""

    num_frames: int
    stride: int
    position: float

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.stride < 1 or not 0.0 <= self.position <= 1.0:
            raise ValueError(f"invalid PositionedSampler({self})")

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1

    def __call__(self, num_frames: int, generator: torch.Generator) -> list[int]:
        if num_frames < self.span:
            # the dataset drops (and counts) a video too short for its clip, as for any other sampler
            raise ClipTooShortError(f"a clip needs {self.span} frames but the video has {num_frames}")
        start = round(self.position * (num_frames - self.span))
        return [start + i * self.stride for i in range(self.num_frames)]


def clip_positions(count: int) -> list[float]:
    """`count` evenly spaced clip positions covering the video (one: the centre)."""
    if count < 1:
        raise ValueError(f"clip count must be >= 1, got {count}")
    return [0.5] if count == 1 else [i / (count - 1) for i in range(count)]


class ContextReadout(nn.Module):
    """Encoder → ReLU → time average per block → ConvGRU(s) over the blocks → last state.

    Inputs: video B×C×(num_seq·L)×H×W. Outputs: B×(D·len(aggregators))×H'×W' (forward state first; a
    second aggregator reads the blocks in reverse, as MemDPC's downstream model).
    """

    def __init__(self, encoder: nn.Module, aggregators: Sequence[ConvGRU], num_seq: int) -> None:
        super().__init__()
        if not 1 <= len(aggregators) <= 2:
            raise ValueError(f"ContextReadout takes one or two aggregators, got {len(aggregators)}")
        self.encoder = encoder
        self.aggregators = nn.ModuleList(aggregators)
        self.num_seq = num_seq
        self.out_channels = sum(a.hidden_channels for a in aggregators)

    def forward(self, video: Tensor) -> Tensor:
        if video.ndim != 5 or video.shape[2] % self.num_seq:
            raise ValueError(f"ContextReadout expects B×C×(num_seq·L)×H×W with num_seq={self.num_seq}, "
                             f"got shape {tuple(video.shape)}")
        blocks = rearrange(video, "b c (n l) h w -> (b n) c l h w", n=self.num_seq)
        maps = F.relu(self.encoder(blocks)).mean(dim=2)  # (B·N, D, H', W')
        maps = rearrange(maps, "(b n) d h w -> b n d h w", n=self.num_seq)
        states = [aggregator(maps if i == 0 else maps.flip(1))[0][:, -1]
                  for i, aggregator in enumerate(self.aggregators)]
        return torch.cat(states, dim=1)


def context_readout(encoder: nn.Module, num_seq: int, checkpoint: Checkpoint | None = None) -> ContextReadout:
    """The context read-out a checkpoint exports (its ConvGRU ``aggregator``, and ``aggregator_backward`` if
    it has one, shaped as the task's kernel_size/num_layers), or, for none or the random twin, one ConvGRU
    (1×1, one layer) at the fixed random-init seed with the papers' orthogonal init. The ConvGRUs drop 0.1
    of their state in training mode (fine-tuning), as the papers' downstream model."""
    dim = encoder.out_channels
    if checkpoint is None or checkpoint.is_random:
        # The downstream ConvGRU keeps the papers' hidden-state dropout 0.1: it acts while fine-tuning only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            gru = ConvGRU(dim, dim, kernel_size=1, num_layers=1, hidden_dropout=0.1)
            return ContextReadout(encoder, [orthogonal_init_(gru)], num_seq)
    states = checkpoint.readout_states()
    shape = checkpoint.exports.readout
    aggregators = []
    for state in states:
        aggregator = ConvGRU(dim, dim, kernel_size=int(shape["kernel_size"]), num_layers=int(shape["num_layers"]),
                             hidden_dropout=0.1)
        aggregator.load_state_dict(state)
        aggregators.append(aggregator)
    return ContextReadout(encoder, aggregators, num_seq)


def load_trained(checkpoint: str | Checkpoint, encoder_cfg: Any, *, running_stats: bool = False,
                 ) -> tuple[nn.Module, Checkpoint]:
    """(encoder, the checkpoint) of a checkpoint path, ``"random"`` (the fixed-seed random encoder of
    `encoder_cfg`) or a `Checkpoint`; pass the checkpoint on to `context_readout`.

    `running_stats=True` rebuilds an encoder trained without batch-norm running statistics (DPC) with
    them, as the papers' downstream model does; its fresh statistics are the only weights not loaded.
    """
    source = Checkpoint.open(checkpoint, encoder=encoder_cfg)
    return source.build_encoder(running_stats=running_stats), source


class ContextClassifier(nn.Module):
    """The papers' downstream classifier: context read-out → BatchNorm1d → dropout → linear.

    Inputs: video B×C×(num_seq·L)×H×W. Outputs: logits B×num_classes.
    The linear layer is orthogonal with a zero bias, the batch norm starts at (1, 0), as the official code.
    """

    def __init__(self, readout: ContextReadout, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.readout = readout
        self.norm = nn.BatchNorm1d(readout.out_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = orthogonal_init_(nn.Linear(readout.out_channels, num_classes))

    def forward(self, video: Tensor) -> Tensor:
        context = self.readout(video).flatten(2).mean(dim=2)  # spatial average: (B, D')
        return self.fc(self.dropout(self.norm(context)))


def _loader(dataset: Dataset, batch_size: int, num_workers: int, *, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_kept, drop_last=shuffle,
                      generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _probabilities(model: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                   ) -> tuple[dict[int, Tensor], dict[int, int], dict[str, str]]:
    """Softmax and label per dataset index of the good clips, and `{path: reason}` of the bad ones dropped."""
    from tqdm import tqdm  # progress and ETA on stderr

    probs, labels, dropped = {}, {}, {}
    for batch in tqdm(_loader(dataset, batch_size, num_workers, shuffle=False, seed=0), desc="test clips",
                      unit="batch"):
        dropped.update({path: reason for _, path, reason in batch["dropped"]})
        if "video" not in batch:
            continue
        out = torch.softmax(model(batch["video"].to(device)).float(), dim=1).cpu()
        for index, label, p in zip(batch["index"].tolist(), batch["label"].tolist(), out):
            probs[index], labels[index] = p, label
    return probs, labels, dropped


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float | int]:
    """Train every parameter of `model` on `train_set` (the training half of `finetune`); leaves it in eval mode.

    `seed` draws the batches and the dropout masks (the caller's random state is left as it was), so a model
    built the same way trains the same way. Outputs: `{"train_loss_first", "train_loss_last"` (mean of the
    first / last 10 steps), `"train_dropped"` (bad training videos met)}.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"finetune needs steps >= 1 and batch_size >= 1, got {steps}, {batch_size}")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(model, train_set, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      num_workers=num_workers, device=device, seed=seed)


def _train(model: nn.Module, train_set: Dataset, *, steps: int, batch_size: int, lr: float, weight_decay: float,
           num_workers: int, device: torch.device, seed: int) -> dict[str, float | int]:
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    train_dropped: dict[str, str] = {}
    epoch = 0
    from tqdm import tqdm  # progress and ETA on stderr: fine-tuning ran minutes in silence

    bar = tqdm(total=steps, desc="fine-tune", unit="step")
    with torch.enable_grad(), bar:
        while len(losses) < steps:
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            for batch in _loader(train_set, batch_size, num_workers, shuffle=True, seed=seed + epoch):
                for _, path, reason in batch["dropped"]:
                    if path not in train_dropped:
                        log.warning("fine-tuning drops bad video %s: %s", path, reason)
                    train_dropped[path] = reason
                if "video" not in batch or len(batch["video"]) < 2:  # batch norm needs two clips to train
                    continue
                labels = torch.as_tensor(batch["label"], dtype=torch.long, device=device)
                if (labels < 0).any():
                    raise ValueError("finetune needs labelled videos (a manifest with a `label` column)")
                loss = F.cross_entropy(model(batch["video"].to(device)), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                if len(losses) == steps:
                    break
            else:
                if not losses:
                    raise ValueError(f"finetune: the training set has fewer than batch_size={batch_size} readable "
                                     f"videos ({len(train_dropped)} bad)")
            epoch += 1
    model.eval()
    return {
        "train_loss_first": sum(losses[:10]) / len(losses[:10]),
        "train_loss_last": sum(losses[-10:]) / len(losses[-10:]),
        "train_dropped": len(train_dropped),
    }


@dataclass(frozen=True)
class ClipScores:
    """A classifier's test softmax per video index: `mean` over the test sets (clips), `centre` of the middle
    one; `labels` per index; only videos every test set could read. `dropped`: `{path: reason}` of the rest."""

    mean: dict[int, Tensor]
    centre: dict[int, Tensor]
    labels: dict[int, int]
    dropped: dict[str, str]


def scoring_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of `score_clips` among those of `train_classifier`."""
    return {key: options[key] for key in ("batch_size", "num_workers", "device") if key in options}


def score_clips(model: nn.Module, test_sets: Sequence[Dataset], *, batch_size: int, num_workers: int = 0,
                device: str | torch.device = "cpu") -> ClipScores:
    """Softmax of `model` (in eval mode) on every clip of `test_sets` (one clip per video each), per video.

    A bad file (a `VideoDataset` with `substitute=False`) is dropped, never replaced; a video bad in any set
    is left out of every one.
    """
    if not test_sets:
        raise ValueError("finetune needs a test set")
    device = torch.device(device)
    model.to(device).eval()
    per_clip = [_probabilities(model, test_set, batch_size, num_workers, device) for test_set in test_sets]
    dropped = {path: reason for _, _, bad in per_clip for path, reason in bad.items()}
    for path, reason in dropped.items():
        log.warning("evaluation drops bad video %s: %s", path, reason)
    videos = sorted(set.intersection(*(set(probs) for probs, _, _ in per_clip)))
    middle = per_clip[len(per_clip) // 2][0]
    return ClipScores(mean={v: torch.stack([probs[v] for probs, _, _ in per_clip]).mean(0) for v in videos},
                      centre={v: middle[v] for v in videos}, labels={v: per_clip[0][1][v] for v in videos},
                      dropped=dropped)


def top1(probs: Mapping[int, Tensor], labels: Mapping[int, int], videos: Sequence[int]) -> float:
    """Fraction of `videos` whose argmax of `probs` (K per video) is its label."""
    scores = torch.stack([probs[v] for v in videos])
    return (scores.argmax(1) == torch.tensor([labels[v] for v in videos])).float().mean().item()


def finetune(model: ContextClassifier, train_set: Dataset, test_sets: Sequence[Dataset], **options: Any,
             ) -> dict[str, float | int]:
    """Fine-tune every parameter of `model` on `train_set`, then test on `test_sets`.

    `options`: the keywords of `train_classifier` (`steps` and `batch_size` required; `lr`, `weight_decay`,
    `num_workers`, `device`, `seed`). Training: Adam (L2 weight decay on every parameter, as the official
    `eval/test.py`) for `steps` batches of randomly drawn, augmented clips (epochs as needed), cross-entropy
    on the labels.
    Test: every test set holds one clip per video (e.g. `PositionedSampler` at `clip_positions(n)`); a video's
    prediction is the argmax of its softmax averaged over the sets. A bad file (a `VideoDataset` with
    `substitute=False`) is dropped from its batch, never replaced; a test video bad in any set is left out.

    Inputs: samples `{"video": C×(num_seq·L)×H×W, "label": int, "index": int}`; labels in 0..K-1.
    Outputs: `{"top1"` (multi-clip), `"top1_one_clip"` (the middle test set alone), `"train_loss_first"`,
    `"train_loss_last"` (mean of the first / last 10 steps), `"train_dropped"` (bad training videos met),
    `"test_used"` (videos scored), `"test_dropped"` (bad test videos left out)}.
    """
    if not test_sets:
        raise ValueError("finetune needs a test set")
    trained = train_classifier(model, train_set, **options)
    scores = score_clips(model, test_sets, **scoring_options(options))
    videos = sorted(scores.mean)
    if not videos:
        raise ValueError(f"finetune: no test video could be read ({len(scores.dropped)} bad)")
    return {
        "top1": top1(scores.mean, scores.labels, videos),
        "top1_one_clip": top1(scores.centre, scores.labels, videos),
        **trained,
        "test_used": len(videos),
        "test_dropped": len(scores.dropped),
    }
