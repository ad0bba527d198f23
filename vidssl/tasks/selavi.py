"""SeLaVi: labelling unlabelled videos by audio-visual self-labelling with optimal transport.

Asano, Patrick, Rupprecht & Vedaldi, "Labelling unlabelled videos from scratch with multi-modal
self-supervision", NeurIPS 2020; built on SeLa (Asano et al., ICLR 2020) and SwAV's Sinkhorn-Knopp
(Caron et al., NeurIPS 2020).

A video encoder and an audio encoder (log-mel) each feed a small projection and H linear classification
heads over K_h clusters ("decorrelated heads": each head is its own clustering, K may differ per head).
The pseudo-labels come from optimal transport: for each head, the assignment of clips to clusters that
maximises the agreement with the combined prediction of both modalities — the mean of their log
probabilities, i.e. the product of their distributions — under an equipartition constraint (or a
non-uniform cluster marginal), solved by the shared `sinkhorn_knopp`. Audio and video of one clip thus
share one label, and each modality's heads are trained with cross-entropy to it.

Where the labels come from (``label_update_every``):

- ``0`` — online, SwAV-style: every step the current batch (plus the rows of the feature bank, once
  ``warmup_steps`` are done) is assigned by Sinkhorn, and the batch is trained on its own rows (soft
  codes, or their argmax with ``targets="hard"``);
- ``N > 0`` — scheduled, SeLa/SeLaVi-style: a hard label per clip is kept in a table; every N steps
  from ``warmup_steps`` on (the ``on_train_step_end`` hook) every clip in the feature bank is
  relabelled at once. A clip that has no stored label yet is trained on its online assignment.

The feature bank (`FeatureBank`) holds the detached head inputs of recently seen clips: the last
``queue_size`` clips (``label_bank="queue"``), or the latest of every clip of the dataset
(``label_bank="dataset"``), and the current heads are applied to it whenever labels are computed.

Variants: ``fusion="split"`` (each modality has its own heads, all predicting the shared label: the
paper's modality splitting) or ``"concat"`` (one set of heads on the concatenated features: the naive
baseline the paper compares against); ``align_modalities`` permutes the audio heads' clusters once,
before the first labelling, to best match the video heads' (the paper's modality alignment), since two
randomly initialised heads number their clusters independently; ``marginal="gaussian"`` replaces the
equipartition by cluster sizes drawn from N(1, marginal_std) (the paper's Gaussian marginals, matched to
the clusters in order of their current size). ``audio_encoder=None`` is the single-modality SeLa
variant, for videos without sound.

Under DDP every rank keeps its own clips in its bank: Sinkhorn all-reduces only row/column sums (the
shared function does it), the alignment cost (K×K) and the cluster masses (K) are summed over ranks, and
after a scheduled update the label tables are merged with one all-reduce of N integers. No rank ever
gathers the N×K scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from vidssl import distributed
from vidssl.encoders import pool
from vidssl.losses import sinkhorn_knopp

FUSIONS = ("split", "concat")
LABEL_BANKS = ("none", "queue", "dataset")
TARGETS = ("soft", "hard")
MARGINALS = ("uniform", "gaussian")


class FeatureBank(nn.Module):
    """Detached embeddings of recently seen clips and their dataset indices.

    ``mode="queue"``: a ring buffer of the last ``size`` clips (SwAV's queue). ``mode="dataset"``: one
    row per dataset index, grown on demand, holding the latest embedding of every clip seen (the rows a
    whole-dataset labelling is computed from).

    The state is saved as the module's extra state rather than as buffers: DDP overwrites every buffer
    with rank 0's copy before each forward, but each rank must keep its own clips. A checkpoint holds
    rank 0's bank; it is restored only into a single-process run saved by a single process (a DDP run
    refills its banks after a resume, within ``size`` clips or one epoch).
    """

    def __init__(self, dims: dict[str, int], *, mode: str, size: int = 0) -> None:
        super().__init__()
        if mode not in ("queue", "dataset"):
            raise ValueError(f"FeatureBank: mode must be 'queue' or 'dataset', got {mode!r}")
        if mode == "queue" and size < 1:
            raise ValueError(f"FeatureBank: a queue needs size >= 1, got {size}")
        self.dims = dict(dims)
        self.mode = mode
        self.size = size
        self._clear()

    def _clear(self) -> None:
        capacity = self.size if self.mode == "queue" else 0
        self.indices = torch.full((capacity,), -1, dtype=torch.long)  # -1: empty row
        self.features = {s: torch.zeros(capacity, d) for s, d in self.dims.items()}
        self.pointer = 0  # queue: the next row to overwrite

    def __len__(self) -> int:
        return int((self.indices >= 0).sum())

    def _to(self, device: torch.device) -> None:
        if self.indices.device != device:
            self.indices = self.indices.to(device)
            self.features = {s: f.to(device) for s, f in self.features.items()}

    def _grow(self, capacity: int) -> None:
        extra = capacity - len(self.indices)
        self.indices = torch.cat([self.indices, self.indices.new_full((extra,), -1)])
        self.features = {s: torch.cat([f, f.new_zeros(extra, f.shape[1])]) for s, f in self.features.items()}

    @torch.no_grad()
    def push(self, embeddings: dict[str, Tensor], indices: Tensor) -> None:
        """Store a batch.

        Inputs: embeddings {stream: B×dim} (detached here), indices B (dataset indices, int).
        """
        indices = indices.long()
        self._to(indices.device)
        if self.mode == "dataset":
            if int(indices.min()) < 0:
                raise ValueError(f"FeatureBank: dataset indices must be >= 0, got {int(indices.min())}")
            needed = int(indices.max()) + 1
            if needed > len(self.indices):
                self._grow(max(needed, 2 * len(self.indices)))  # doubling: amortised O(1) per clip
            rows = indices
        else:
            if len(indices) > self.size:  # a batch larger than the queue: keep its newest rows
                indices = indices[-self.size :]
                embeddings = {s: e[-self.size :] for s, e in embeddings.items()}
            rows = (self.pointer + torch.arange(len(indices), device=indices.device)) % self.size
            self.pointer = (self.pointer + len(indices)) % self.size
        self.indices[rows] = indices
        for stream, features in self.features.items():
            features[rows] = embeddings[stream].detach().float()

    def contents(self) -> tuple[dict[str, Tensor], Tensor]:
        """The filled rows: ({stream: M×dim}, indices M)."""
        filled = self.indices >= 0
        return {s: f[filled] for s, f in self.features.items()}, self.indices[filled]

    def get_extra_state(self) -> dict[str, Any]:
        return {"indices": self.indices.cpu(), "features": {s: f.cpu() for s, f in self.features.items()},
                "pointer": self.pointer, "world_size": distributed.world_size()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state["world_size"] == 1 and distributed.world_size() == 1:
            self.indices = state["indices"].clone()
            self.features = {s: f.clone() for s, f in state["features"].items()}
            self.pointer = int(state["pointer"])
        else:
            self._clear()


class SeLaVi(nn.Module):
    """Audio-visual (or video-only) self-labelling with Sinkhorn-Knopp pseudo-labels.

    Args:
        encoder: the video encoder, ``B×3×T×H×W -> B×D×T'×H'×W'`` with ``out_channels``; saved as the
            checkpoint's ``encoder``.
        audio_encoder: the log-mel encoder, ``B×1×F×T -> B×D_a×F'×T'``; None: video only (SeLa).
        num_clusters: K of each head; ``len(num_clusters)`` heads, head 0 is the main one.
        hidden_dim: width of the projection (Linear-BatchNorm-ReLU) before the heads; 0: heads on the
            pooled features directly.
        fusion: "split" (heads per modality, one shared label) or "concat" (heads on the concatenated
            features).
        align_modalities: permute the audio heads' clusters to the video heads' before the first labelling.
        epsilon: Sinkhorn's entropic regularisation (on mean log-probabilities; 1/λ of SeLa).
        sinkhorn_iterations: Sinkhorn iterations per labelling.
        targets: "soft" (Sinkhorn codes) or "hard" (their argmax) for online labels; stored labels are hard.
        label_bank: "none", "queue" (last ``queue_size`` clips) or "dataset" (every clip's latest).
        queue_size: rows of the queue.
        label_update_every: 0: online labels each step; N: relabel the bank every N steps.
        warmup_steps: steps before the bank takes part in labelling (and before the first scheduled update).
        marginal: "uniform" (equipartition) or "gaussian" (cluster sizes ∝ N(1, marginal_std), clamped).
        marginal_std: spread of the Gaussian marginal.
        seed: seed of the Gaussian marginal's draw.

    ``forward(batch)`` reads ``batch["video"]`` B×3×T×H×W, ``batch["audio"]`` B×1×F×T (with an audio
    encoder) and ``batch["index"]`` B, and returns ``loss`` and diagnostics: ``loss_video``,
    ``loss_audio`` (with audio), ``entropy`` (mean normalised entropy of head 0's combined prediction:
    1 = uniform), ``agreement`` (fraction of clips whose video and audio head-0 argmax agree; 1 without
    split audio heads), ``labelled`` (fraction of the batch trained on stored labels) and
    ``label_changes`` (fraction of clips whose head-0 label changed the last time they were relabelled:
    this batch when online, the last update when scheduled).
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        audio_encoder: nn.Module | None = None,
        num_clusters: Sequence[int] = (10,),
        hidden_dim: int = 128,
        fusion: str = "split",
        align_modalities: bool = True,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        targets: str = "soft",
        label_bank: str = "queue",
        queue_size: int = 256,
        label_update_every: int = 0,
        warmup_steps: int = 0,
        marginal: str = "uniform",
        marginal_std: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        num_clusters = [int(k) for k in num_clusters]
        if not num_clusters or min(num_clusters) < 2:
            raise ValueError(f"SeLaVi: num_clusters needs at least one head of K >= 2, got {num_clusters}")
        for name, value, allowed in (("fusion", fusion, FUSIONS), ("label_bank", label_bank, LABEL_BANKS),
                                     ("targets", targets, TARGETS), ("marginal", marginal, MARGINALS)):
            if value not in allowed:
                raise ValueError(f"SeLaVi: {name} must be one of {allowed}, got {value!r}")
        if label_update_every < 0 or warmup_steps < 0:
            raise ValueError("SeLaVi: label_update_every and warmup_steps must be >= 0")
        if label_update_every > 0 and label_bank == "none":
            raise ValueError("SeLaVi: scheduled label updates (label_update_every > 0) need label_bank "
                             "'queue' or 'dataset' to relabel")
        if fusion == "concat" and audio_encoder is None:
            raise ValueError("SeLaVi: fusion='concat' needs an audio_encoder")
        self.encoder = encoder
        self.audio_encoder = audio_encoder
        self.num_clusters = num_clusters
        self.fusion = fusion
        self.align_modalities = align_modalities and fusion == "split" and audio_encoder is not None
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.targets = targets
        self.label_update_every = label_update_every
        self.warmup_steps = warmup_steps
        self.marginal = marginal

        # Streams: the inputs that heads read. "split": one per modality; "concat": one joint stream.
        widths = {"video": encoder.out_channels}
        if audio_encoder is not None:
            widths["audio"] = audio_encoder.out_channels
        if fusion == "concat":
            widths = {"joint": widths["video"] + widths["audio"]}
        self.projections = nn.ModuleDict({s: _projection(d, hidden_dim) for s, d in widths.items()})
        dims = {s: hidden_dim or d for s, d in widths.items()}
        self.heads = nn.ModuleDict(
            {s: nn.ModuleList(nn.Linear(d, k) for k in num_clusters) for s, d in dims.items()}
        )
        self.bank = None if label_bank == "none" else FeatureBank(
            dims, mode=label_bank, size=queue_size if label_bank == "queue" else 0)

        # One fixed draw of relative cluster sizes per head (same seed on every rank).
        generator = torch.Generator().manual_seed(seed)
        for h, k in enumerate(num_clusters):
            if marginal == "gaussian":
                sizes = (1 + marginal_std * torch.randn(k, generator=generator)).clamp(min=0.05)
            else:
                sizes = torch.ones(k)
            self.register_buffer(f"marginal_{h}", sizes / sizes.sum())

        # Training state kept as extra state (see FeatureBank for why not buffers).
        self.labels = torch.full((len(num_clusters), 0), -1, dtype=torch.long)  # H×N; -1: none yet
        self.step = 0
        self.aligned = False
        self.last_label_changes = 0.0

    # ---- embeddings, logits, scores ---------------------------------------------------------------

    @property
    def streams(self) -> list[str]:
        return list(self.projections)

    @property
    def can_label_video_only(self) -> bool:
        """Whether clips without sound can be labelled (from the video heads alone)."""
        return self.fusion == "split"

    def embed(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Head inputs of a batch.

        Inputs: batch["video"] B×3×T×H×W, batch["audio"] B×1×F×T (when there is an audio encoder).
        Outputs: {stream: B×dim}; streams "video"[, "audio"] (split) or "joint" (concat).
        """
        if "video" not in batch:
            raise KeyError("SeLaVi: the batch has no 'video'")
        pooled = {"video": pool(self.encoder(batch["video"]))}
        if self.audio_encoder is not None:
            if "audio" not in batch:
                raise KeyError("SeLaVi: the batch has no 'audio'; configure the dataset with audio (task "
                               "data.audio) or use the video-only task (audio_encoder: null)")
            pooled["audio"] = pool(self.audio_encoder(batch["audio"]))
        if self.fusion == "concat":
            pooled = {"joint": torch.cat([pooled["video"], pooled["audio"]], dim=1)}
        return {s: self.projections[s](x) for s, x in pooled.items()}

    def head_logits(self, embeddings: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """Inputs: {stream: B×dim}. Outputs: {stream: [B×K_h for each head]}."""
        return {s: [head(embeddings[s]) for head in self.heads[s]] for s in embeddings}

    @staticmethod
    def combined_scores(logits: dict[str, list[Tensor]], streams: Sequence[str] | None = None) -> list[Tensor]:
        """Per head, the mean over ``streams`` of the log-probabilities (the log of the product of the
        modalities' distributions, up to a per-clip constant that Sinkhorn's row scaling removes).

        Inputs: {stream: [B×K_h]}. Outputs: [B×K_h] per head, fp32.
        """
        streams = list(logits) if streams is None else list(streams)
        num_heads = len(logits[streams[0]])
        return [
            torch.stack([F.log_softmax(logits[s][h].float(), dim=1) for s in streams]).mean(0)
            for h in range(num_heads)
        ]

    # ---- labelling ------------------------------------------------------------------------------------

    @torch.no_grad()
    def assign(self, scores: Sequence[Tensor]) -> list[Tensor]:
        """Sinkhorn-Knopp codes per head under the cluster marginal.

        Inputs: scores [N×K_h] per head (this rank's rows under DDP). Outputs: [N×K_h] codes, rows sum
        to 1, columns to N·marginal (all ranks' rows together).
        """
        codes = []
        for h, s in enumerate(scores):
            s = s.detach().float()
            columns = getattr(self, f"marginal_{h}")
            if self.marginal == "gaussian":
                # The drawn sizes go to the clusters in the order of their current mass, so the largest
                # cluster keeps the largest share (SeLaVi sorts its Gaussian marginal the same way).
                mass = distributed.all_reduce_sum(F.softmax(s, dim=1).sum(0))
                matched = torch.empty_like(columns)
                matched[mass.argsort()] = columns.sort().values
                columns = matched
            codes.append(sinkhorn_knopp(s, self.epsilon, self.sinkhorn_iterations, marginals=(None, columns)))
        return codes

    @torch.no_grad()
    def _align(self, embeddings: dict[str, Tensor]) -> None:
        """Permute each audio head's clusters to best match the video head's on these clips.

        The cost of pairing video cluster i with audio cluster j is Σ_n |p_v[n,i] − p_a[n,j]| (as in
        SeLaVi's alignment); the cost of a permutation is a sum of such pairs, so the Hungarian
        algorithm finds the best one exactly. The cost is summed over ranks so all ranks permute alike.
        """
        for h in range(len(self.num_clusters)):
            video = F.softmax(self.heads["video"][h](embeddings["video"]).float(), dim=1)  # N×K
            audio = F.softmax(self.heads["audio"][h](embeddings["audio"]).float(), dim=1)
            cost = distributed.all_reduce_sum(torch.cdist(video.T, audio.T, p=1))  # K×K
            _, order = linear_sum_assignment(cost.cpu().double().numpy())
            order = torch.as_tensor(order, device=video.device)
            head = self.heads["audio"][h]
            head.weight.copy_(head.weight[order])
            head.bias.copy_(head.bias[order])
        self.aligned = True

    def _labels_for(self, indices: Tensor) -> Tensor:
        """Stored labels H×B of these clips (-1 where none)."""
        known = self.labels.to(indices.device)
        inside = indices < known.shape[1]
        out = torch.full((len(self.num_clusters), len(indices)), -1, dtype=torch.long, device=indices.device)
        out[:, inside] = known[:, indices[inside]]
        return out

    def _store(self, indices: Tensor, labels: Tensor, *, merge_ranks: bool) -> float:
        """Write labels H×M of clips ``indices``; return the fraction of head-0 labels that changed.

        With ``merge_ranks`` the tables of all ranks are merged (one all-reduce of H×N ints), so every
        rank holds every rank's new labels.
        """
        device = indices.device
        size = int(indices.max()) + 1 if len(indices) else 0
        size = max(size, self.labels.shape[1])
        if merge_ranks:
            size = int(distributed.all_reduce_max(torch.tensor([size], device=device)).item())
        table = torch.full((len(self.num_clusters), size), -1, dtype=torch.long, device=device)
        table[:, : self.labels.shape[1]] = self.labels.to(device)
        before = table[0, indices]
        seen = before >= 0
        changed = float(((before != labels[0]) & seen).sum())
        counted = float(seen.sum())
        fresh = torch.full_like(table, -1)
        fresh[:, indices] = labels
        if merge_ranks:
            distributed.all_reduce_max(fresh)
            totals = distributed.all_reduce_sum(torch.tensor([changed, counted], device=device))
            changed, counted = float(totals[0]), float(totals[1])
        self.labels = torch.where(fresh >= 0, fresh, table)
        return changed / counted if counted else 0.0

    def _online_targets(self, scores: list[Tensor]) -> list[Tensor]:
        """Codes B×K_h per head for this batch, from Sinkhorn on the batch plus the bank (after warmup)."""
        batch_size = len(scores[0])
        rows = scores
        if self.bank is not None and len(self.bank) > 0 and self.step >= self.warmup_steps:
            bank_scores = self.combined_scores(self.head_logits(self.bank.contents()[0]))
            rows = [torch.cat([s, b]) for s, b in zip(scores, bank_scores)]
        codes = [q[:batch_size] for q in self.assign(rows)]
        if self.targets == "hard":
            codes = [F.one_hot(q.argmax(1), q.shape[1]).float() for q in codes]
        return codes

    @torch.no_grad()
    def update_labels(self) -> None:
        """Relabel every clip in the bank at once (the scheduled update; all ranks call it together)."""
        rows = self.bank.contents() if self.bank is not None else None
        if rows is None or len(rows[1]) == 0:
            raise RuntimeError("SeLaVi.update_labels: the feature bank is empty (no training step yet?)")
        embeddings, indices = rows
        if self.align_modalities and not self.aligned:
            self._align(embeddings)
        scores = self.combined_scores(self.head_logits(embeddings))
        labels = torch.stack([q.argmax(1) for q in self.assign(scores)])
        self.last_label_changes = self._store(indices, labels, merge_ranks=True)

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        """Record the step (``step`` optimiser steps are done) and run the label schedule."""
        self.step = step
        every = self.label_update_every
        if every > 0 and step >= self.warmup_steps and (step - self.warmup_steps) % every == 0:
            self.update_labels()

    # ---- training ---------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        embeddings = self.embed(batch)
        if self.training and self.align_modalities and not self.aligned:
            self._align(embeddings)  # before the first labelling, so labels come from aligned heads
        logits = self.head_logits(embeddings)
        scores = self.combined_scores(logits)
        indices = batch["index"].to(scores[0].device).long()

        with torch.no_grad():
            # Online codes are computed every step, even when every clip has a stored label, so that all
            # DDP ranks run the same collectives whatever labels their own clips have.
            targets = self._online_targets(scores)
            if self.label_update_every > 0:
                stored = self._labels_for(indices)  # H×B
                use_stored = stored[0] >= 0
                targets = [torch.where(use_stored[:, None], F.one_hot(stored[h].clamp(min=0), k).float(), t)
                           for h, (k, t) in enumerate(zip(self.num_clusters, targets))]
            else:
                use_stored = torch.zeros_like(indices, dtype=torch.bool)

        losses = {s: torch.stack([F.cross_entropy(logits[s][h], targets[h]) for h in range(len(targets))]).mean()
                  for s in logits}
        out = {"loss": torch.stack(list(losses.values())).mean()}
        out.update({f"loss_{s}": v.detach() for s, v in losses.items() if s != "joint"})

        with torch.no_grad():
            probs = scores[0].softmax(1)
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean() / math.log(self.num_clusters[0])
            out["entropy"] = entropy
            if self.fusion == "split" and "audio" in logits:
                agree = logits["video"][0].argmax(1) == logits["audio"][0].argmax(1)
                out["agreement"] = agree.float().mean()
            else:
                out["agreement"] = torch.ones((), device=probs.device)
            out["labelled"] = use_stored.float().mean()
            if self.training:
                if self.label_update_every == 0:
                    # Online: the table only remembers each clip's last label for this diagnostic.
                    hard = torch.stack([t.argmax(1) for t in targets])
                    self.last_label_changes = self._store(indices, hard, merge_ranks=False)
                if self.bank is not None:
                    self.bank.push({s: e.detach() for s, e in embeddings.items()}, indices)
            out["label_changes"] = torch.tensor(self.last_label_changes, device=probs.device)
        return out

    # ---- inference ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, batch: dict[str, Tensor], modalities: Sequence[str] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Cluster log-probabilities for labelling (no state changes).

        Inputs: a batch as for ``forward``; ``batch["has_audio"]`` B bool (optional) marks clips without
            sound, which are scored from the video heads alone (split fusion only). ``modalities``: the
            heads to combine, e.g. ``["video"]`` or ``["audio"]`` (split fusion); None: every modality.
        Outputs: (embedding B×dim: the video (or joint) head input, for cluster centres;
            [B×K_h] per head: log of the normalised combined distribution).
        """
        embeddings = self.embed(batch)
        logits = self.head_logits(embeddings)
        stream = "joint" if self.fusion == "concat" else "video"
        if modalities is not None:
            unknown = set(modalities) - set(logits)
            if unknown or not modalities:
                raise ValueError(f"SeLaVi.predict: modalities {list(modalities)} must be some of {list(logits)}")
            return embeddings[stream], [F.log_softmax(s, dim=1) for s in self.combined_scores(logits, modalities)]
        scores = self.combined_scores(logits)
        has_audio = batch.get("has_audio")
        if has_audio is not None and not bool(torch.as_tensor(has_audio).all()):
            if "audio" not in logits:
                raise ValueError("SeLaVi.predict: clips without audio cannot be labelled with fusion='concat'")
            silent = ~torch.as_tensor(has_audio, device=scores[0].device).bool()
            video_only = self.combined_scores(logits, ["video"])
            scores = [torch.where(silent[:, None], v, s) for s, v in zip(scores, video_only)]
        return embeddings[stream], [F.log_softmax(s, dim=1) for s in scores]

    # ---- state ------------------------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"labels": self.labels.cpu(), "step": self.step, "aligned": self.aligned,
                "last_label_changes": self.last_label_changes}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.labels = state["labels"].clone()
        self.step = int(state["step"])
        self.aligned = bool(state["aligned"])
        self.last_label_changes = float(state["last_label_changes"])


def _projection(in_dim: int, hidden_dim: int) -> nn.Module:
    if hidden_dim == 0:
        return nn.Identity()
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True))


# ---- benchmark ----------------------------------------------------------------------------------------


def example_batch(
    *, batch_size: int = 8, num_frames: int = 8, size: int = 64, n_mels: int = 40, audio_frames: int = 101,
    audio: bool = True, seed: int = 0,
) -> dict[str, Tensor]:
    """A random batch of the task's synthetic-default shapes (for timing, not learning)."""
    g = torch.Generator().manual_seed(seed)
    batch = {"video": torch.randn(batch_size, 3, num_frames, size, size, generator=g),
             "index": torch.arange(batch_size)}
    if audio:
        batch["audio"] = torch.randn(batch_size, 1, n_mels, audio_frames, generator=g)
    return batch


def benchmark_step(
    model: SeLaVi, batch: dict[str, Tensor], *, steps: int = 5, warmup: int = 2, lr: float = 1e-3,
) -> dict[str, float]:
    """Time one training step (forward, backward, AdamW step, label hook) of ``model`` on ``batch``.

    Outputs: {"seconds_per_step" (median), "clips_per_second", "batch_size", "peak_memory_mb" (CUDA only,
    else 0)}. The batch must already be on the model's device.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    device = batch["video"].device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.on_train_step_end(i + 1, warmup + steps)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    batch_size = len(batch["video"])
    return {"seconds_per_step": seconds, "clips_per_second": batch_size / seconds, "batch_size": batch_size,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0}
