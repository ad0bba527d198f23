"""The SeLaVi task: encoders, heads, the loss, the label schedule, and inference (see the package
docstring for the method)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidssl import distributed
from vidssl.encoders import pool
from vidssl.monitors import cluster_sizes, embedding_monitors
from vidssl.tasks.selavi.heads import cluster_head, combined_scores, stream_losses
from vidssl.tasks.selavi.labelling import (
    alignment,
    assign,
    gaussian_marginal,
    hard_labels,
    match_to_mass,
    normalised_entropy,
    relabel_steps,
)
from vidssl.tasks.selavi.relabel import MakeLoader, dataset_features, warm_up_batchnorm
from vidssl.tasks.selavi.state import FeatureQueue, LabelTable

log = logging.getLogger(__name__)

FUSIONS = ("split", "concat")
LABELS = ("scheduled", "online")
TARGETS = ("soft", "hard")
MARGINALS = ("uniform", "gaussian")
# Options that belong to one way of labelling; giving one to the other is a contradiction, not a no-op.
SCHEDULED_ONLY = {"num_relabels": 99, "schedule_power": 1.5, "sinkhorn_tolerance": 0.1,
                  "sinkhorn_max_iterations": 2000, "relabel_batch_size": 64, "bn_warmup_batches": 20}
ONLINE_ONLY = {"sinkhorn_iterations": 3, "targets": "soft", "queue_size": 0, "queue_after": 0}


class SeLaVi(nn.Module):
    """Audio-visual (or video-only) self-labelling with Sinkhorn-Knopp pseudo-labels.

    Args:
        encoder: the video encoder, ``B×3×T×H×W -> B×D×T'×H'×W'`` with ``out_channels``.
        audio_encoder: the log-mel encoder, ``B×1×F×T -> B×D_a×F'×T'``; None: video only (SeLa).
        num_clusters: K of each head; ``len(num_clusters)`` heads, head 0 is the main one.
        head_hidden, head_dropout: each head (per head and modality) is Dropout, Linear to
            ``head_hidden`` (no bias), BatchNorm, ReLU, Dropout, Linear to K; ``head_hidden=0``: Linear.
        fusion: "split" (heads per modality, one shared label) or "concat" (heads on the concatenated
            features).
        align_modalities: permute the audio heads' clusters to the video heads' before the first
            labelling; None: whenever there are audio heads (split fusion with audio); true without
            them is an error.
        epsilon: Sinkhorn's entropic regularisation on the mean log-probabilities (λ = 1/ε; SeLaVi's 20).
        labels: "scheduled" — hard labels per clip, recomputed by an eval-mode pass over the whole
            dataset at the ``num_relabels`` steps of ``relabel_steps`` (the first at step 0), Sinkhorn run
            to ``sinkhorn_tolerance`` (at most ``sinkhorn_max_iterations``); ``relabel_batch_size`` clips a
            batch; ``bn_warmup_batches`` train-mode batches first. "online" — SwAV-style codes each step
            from the batch (plus a queue of ``queue_size`` clips once ``queue_after`` steps are done),
            ``sinkhorn_iterations`` iterations, ``targets`` "soft" or "hard". Options of the other mode
            must stay unset (None).
        marginal: "uniform" (equipartition) or "gaussian" (cluster sizes ∝ N(1, marginal_std), default
            0.1, one draw per head from ``seed``, given to clusters in the order of their current mass).

    ``forward(batch)`` reads ``batch["video"]``, ``batch["audio"]`` (with an audio encoder) and
    ``batch["index"]``, and returns ``loss`` (cross-entropy of every head of every modality to the shared
    labels, averaged: SeLaVi's ½·L_video + ½·L_audio) and diagnostics: ``loss_video``, ``loss_audio``,
    ``entropy`` (head 0's combined prediction, normalised: 1 = uniform), ``agreement`` (video and audio
    head-0 argmax agree), and when scheduled ``label_changes`` (fraction of head-0 labels the last
    relabelling changed) and ``sinkhorn_iterations`` (its head-0 Sinkhorn iterations); the health
    monitors (`vidssl.monitors`) ``embedding_std`` and ``embedding_rankme`` of the video (or joint) pooled
    features, and head 0's cluster sizes ``cluster_min``, ``cluster_max`` (fractions of the clips) and
    ``cluster_entropy`` (over log K): of the whole label table when scheduled (they change at each
    relabelling), of the step's codes when online.
    """

    def __init__(
        self,
        *,
        encoder: nn.Module,
        audio_encoder: nn.Module | None = None,
        num_clusters: Sequence[int] = (10,),
        head_hidden: int = 512,
        head_dropout: float = 0.3,
        fusion: str = "split",
        align_modalities: bool | None = None,
        epsilon: float = 0.05,
        labels: str = "scheduled",
        num_relabels: int | None = None,
        schedule_power: float | None = None,
        sinkhorn_tolerance: float | None = None,
        sinkhorn_max_iterations: int | None = None,
        relabel_batch_size: int | None = None,
        bn_warmup_batches: int | None = None,
        sinkhorn_iterations: int | None = None,
        targets: str | None = None,
        queue_size: int | None = None,
        queue_after: int | None = None,
        marginal: str = "uniform",
        marginal_std: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        given = {k: v for k, v in locals().items() if k in SCHEDULED_ONLY or k in ONLINE_ONLY}
        self.options = _mode_options(labels, given)
        num_clusters = [int(k) for k in num_clusters]
        if not num_clusters or min(num_clusters) < 2:
            raise ValueError(f"SeLaVi: num_clusters needs at least one head of K >= 2, got {num_clusters}")
        for name, value, allowed in (("fusion", fusion, FUSIONS), ("marginal", marginal, MARGINALS),
                                     ("targets", self.options.get("targets", "soft"), TARGETS)):
            if value not in allowed:
                raise ValueError(f"SeLaVi: {name} must be one of {allowed}, got {value!r}")
        if marginal_std is not None and marginal != "gaussian":
            raise ValueError(f"SeLaVi: marginal_std applies to marginal='gaussian', not {marginal!r}; remove it")
        if fusion == "concat" and audio_encoder is None:
            raise ValueError("SeLaVi: fusion='concat' needs an audio_encoder")
        has_audio_heads = audio_encoder is not None and fusion == "split"
        if align_modalities is None:
            align_modalities = has_audio_heads
        if align_modalities and not has_audio_heads:
            raise ValueError("SeLaVi: align_modalities=true needs an audio_encoder and fusion='split' (there are "
                             "no audio heads to align otherwise); set align_modalities=false")
        self.encoder = encoder
        self.audio_encoder = audio_encoder
        self.num_clusters = num_clusters
        self.fusion = fusion
        self.align_modalities = align_modalities
        self.epsilon = epsilon
        self.label_mode = labels
        self.marginal = marginal

        widths = {"video": encoder.out_channels}
        if audio_encoder is not None:
            widths["audio"] = audio_encoder.out_channels
        if fusion == "concat":
            widths = {"joint": widths["video"] + widths["audio"]}
        self.heads = nn.ModuleDict({
            s: nn.ModuleList(cluster_head(d, k, hidden=head_hidden, dropout=head_dropout) for k in num_clusters)
            for s, d in widths.items()
        })
        generator = torch.Generator().manual_seed(seed)
        std = 0.1 if marginal_std is None else marginal_std
        self.marginals = [gaussian_marginal(k, std, generator) if marginal == "gaussian" else None
                          for k in num_clusters]
        self.table = LabelTable(len(num_clusters)) if labels == "scheduled" else None
        queue_size = self.options.get("queue_size", 0)
        self.queue = FeatureQueue(widths, queue_size) if queue_size else None
        # Progress, saved as extra state: the schedule resumes where it was.
        self.relabels_done = 0
        self.step = 0
        self.aligned = False
        self.last_label_changes = 0.0
        self.last_sinkhorn_iterations = 0

    @property
    def can_label_video_only(self) -> bool:
        """Whether clips without sound can be labelled (from the video heads alone)."""
        return self.fusion == "split"

    # ---- features, logits, scores --------------------------------------------------------------------

    def embed(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Head inputs of a batch: {stream: B×D}, streams "video"[, "audio"] (split) or "joint" (concat)."""
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
        return pooled

    def head_logits(self, features: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """Inputs: {stream: B×D}. Outputs: {stream: [B×K_h for each head]}."""
        return {s: [head(features[s]) for head in self.heads[s]] for s in features}

    combined_scores = staticmethod(combined_scores)

    def assign(self, scores: Sequence[Tensor], **sinkhorn: Any) -> list[Tensor]:
        """Codes per head [N×K_h] under the cluster marginal, for scores [N×K_h] (this rank's clips).

        ``sinkhorn``: ``iterations=`` or ``tolerance=`` (and ``max_iterations=``) for `labelling.assign`;
        none: the way this task labels (its relabelling's tolerance, or its online iteration count).
        """
        if not sinkhorn:
            sinkhorn = self._sinkhorn_setting()
        codes, iterations = [], []
        for s, marginal in zip(scores, self.marginals):
            if marginal is not None:
                marginal = match_to_mass(marginal, s)
            q, n = assign(s.detach(), marginal, epsilon=self.epsilon, **sinkhorn)
            codes.append(q)
            iterations.append(n)
        self.last_sinkhorn_iterations = iterations[0]
        return codes

    def _sinkhorn_setting(self) -> dict[str, Any]:
        if self.label_mode == "scheduled":
            return {"tolerance": self.options["sinkhorn_tolerance"],
                    "max_iterations": self.options["sinkhorn_max_iterations"]}
        return {"iterations": self.options["sinkhorn_iterations"]}

    # ---- scheduled labels: a pass over the dataset ----------------------------------------------------

    def on_train_step_start(self, step: int, max_steps: int, make_loader: MakeLoader) -> None:
        """Relabel the dataset when the schedule says so (``step`` optimiser steps are done)."""
        if self.label_mode != "scheduled":
            return
        points = relabel_steps(max_steps, self.options["num_relabels"], self.options["schedule_power"])
        if self.relabels_done >= len(points) or step < points[self.relabels_done]:
            return
        if self.relabels_done == 0 and step == 0:
            warm_up_batchnorm(self, lambda b: self.head_logits(self.embed(b)), make_loader,
                              batches=self.options["bn_warmup_batches"], device=self._device(), seed=0)
        self.relabel(make_loader)
        self.relabels_done += 1
        if distributed.rank() == 0:
            sizes = cluster_sizes(self.table.labels[0], self.num_clusters[0])
            log.info("SeLaVi relabelling %d/%d at step %d: %d Sinkhorn iterations (head 0), %.1f%% of labels "
                     "changed; head-0 clusters from %.1f%% to %.1f%% of the clips, size entropy %.2f of 1",
                     self.relabels_done, len(points), step, self.last_sinkhorn_iterations,
                     100 * self.last_label_changes, 100 * float(sizes["min"]), 100 * float(sizes["max"]),
                     float(sizes["entropy"]))

    @torch.no_grad()
    def relabel(self, make_loader: MakeLoader) -> None:
        """New labels for every clip: eval-mode features of the whole dataset (every rank its shard), the
        modality alignment the first time, then Sinkhorn to convergence per head."""
        was_training = self.training
        self.eval()
        try:
            dataset_size = len(make_loader(batch_size=1).dataset)
            features, indices = dataset_features(self.embed, make_loader, dataset_size=dataset_size,
                                                 batch_size=self.options["relabel_batch_size"],
                                                 device=self._device())
            if self.align_modalities and not self.aligned:
                self._align(features)
            scores = combined_scores(self.head_logits(features), dtype=torch.float64)
            labels = hard_labels(self.assign(scores))
        finally:
            self.train(was_training)
        self.last_label_changes = self.table.update(indices, labels)

    @torch.no_grad()
    def _align(self, features: dict[str, Tensor]) -> None:
        """Permute each audio head's clusters (its last Linear's rows) to best match the video head's."""
        logits = self.head_logits(features)
        for h, head in enumerate(self.heads["audio"]):
            order = alignment(logits["video"][h].double().softmax(1), logits["audio"][h].double().softmax(1))
            last = head[-1]
            last.weight.copy_(last.weight[order.to(last.weight.device)])
            last.bias.copy_(last.bias[order.to(last.bias.device)])
        self.aligned = True

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- training --------------------------------------------------------------------------------------

    @classmethod
    def evaluation_exports(cls, config: dict) -> dict:
        """A trained SeLaVi labels clips with its own cluster heads (``pseudo_label.py method=selavi``)."""
        return {"capabilities": ["cluster_heads"]}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        features = self.embed(batch)
        logits = self.head_logits(features)
        indices = batch["index"].to(next(iter(features.values())).device).long()
        with torch.no_grad():
            if self.label_mode == "scheduled":
                targets = self._stored_targets(indices)
            else:
                targets = self._online_targets(features, logits)

        losses = stream_losses(logits, targets)
        out = {"loss": torch.stack(list(losses.values())).mean()}
        out.update({f"loss_{s}": v.detach() for s, v in losses.items() if s != "joint"})
        with torch.no_grad():
            out["entropy"] = normalised_entropy(combined_scores(logits)[0])
            out.update(embedding_monitors(next(iter(features.values()))))
            # head 0's cluster sizes: over the whole table (they change at each relabelling), or this
            # step's codes when the labels are online
            labels = self.table.labels[0] if self.label_mode == "scheduled" else targets[0].argmax(1)
            out.update({f"cluster_{k}": v.to(out["loss"].device)
                        for k, v in cluster_sizes(labels, self.num_clusters[0]).items()})
            if "audio" in logits:
                out["agreement"] = (logits["video"][0].argmax(1) == logits["audio"][0].argmax(1)).float().mean()
            if self.label_mode == "scheduled":
                device = out["loss"].device
                out["label_changes"] = torch.tensor(self.last_label_changes, device=device)
                out["sinkhorn_iterations"] = torch.tensor(float(self.last_sinkhorn_iterations), device=device)
            elif self.training and self.queue is not None:
                self.queue.push(features)
        return out

    def _stored_targets(self, indices: Tensor) -> list[Tensor]:
        labels = self.table.lookup(indices)
        if bool((labels < 0).any()):
            missing = indices[(labels[0] < 0)][:5].tolist()
            raise RuntimeError(f"SeLaVi: clips {missing} have no pseudo-label yet; scheduled labels come from "
                               "on_train_step_start (the training engine calls it before each step) or relabel()")
        return list(labels)

    def _online_targets(self, features: dict[str, Tensor], logits: dict[str, list[Tensor]]) -> list[Tensor]:
        """Codes B×K_h per head for this batch, from Sinkhorn on the batch plus the queue."""
        if self.training and self.align_modalities and not self.aligned:
            self._align(features)  # before the first labelling, on the first batch
            logits = self.head_logits(features)
        scores = combined_scores(logits)
        batch_size = len(scores[0])
        if self.queue is not None and len(self.queue) > 0 and self.step >= self.options["queue_after"]:
            queued = combined_scores(self.head_logits(self.queue.contents()))
            scores = [torch.cat([s, q]) for s, q in zip(scores, queued)]
        codes = [q[:batch_size] for q in self.assign(scores)]
        if self.options["targets"] == "hard":
            codes = [F.one_hot(q.argmax(1), q.shape[1]).float() for q in codes]
        return codes

    def on_train_step_end(self, step: int, max_steps: int) -> None:
        """Count the steps (online labels: the queue joins after ``queue_after`` of them)."""
        self.step = step

    # ---- inference ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, batch: dict[str, Tensor], modalities: Sequence[str] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Cluster log-probabilities for labelling (no state changes).

        Inputs: a batch as for ``forward``; ``batch["has_audio"]`` B bool (optional) marks clips without
            sound, which are scored from the video heads alone (split fusion only). ``modalities``: the
            heads to combine, e.g. ``["video"]`` or ``["audio"]`` (split fusion); None: every modality.
        Outputs: (the video (or joint) head input B×D, for cluster centres; [B×K_h] per head: log of the
            normalised combined distribution).
        """
        features = self.embed(batch)
        logits = self.head_logits(features)
        stream = "joint" if self.fusion == "concat" else "video"
        if modalities is not None:
            unknown = set(modalities) - set(logits)
            if unknown or not modalities:
                raise ValueError(f"SeLaVi.predict: modalities {list(modalities)} must be some of {list(logits)}")
            return features[stream], [F.log_softmax(s, dim=1) for s in combined_scores(logits, modalities)]
        scores = combined_scores(logits)
        has_audio = batch.get("has_audio")
        if has_audio is not None and not bool(torch.as_tensor(has_audio).all()):
            if "audio" not in logits:
                raise ValueError("SeLaVi.predict: clips without audio cannot be labelled with fusion='concat'")
            silent = ~torch.as_tensor(has_audio, device=scores[0].device).bool()
            video_only = combined_scores(logits, ["video"])
            scores = [torch.where(silent[:, None], v, s) for s, v in zip(scores, video_only)]
        return features[stream], [F.log_softmax(s, dim=1) for s in scores]

    # ---- state ------------------------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {"relabels_done": self.relabels_done, "step": self.step, "aligned": self.aligned,
                "last_label_changes": self.last_label_changes,
                "last_sinkhorn_iterations": self.last_sinkhorn_iterations}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.relabels_done = int(state["relabels_done"])
        self.step = int(state["step"])
        self.aligned = bool(state["aligned"])
        self.last_label_changes = float(state["last_label_changes"])
        self.last_sinkhorn_iterations = int(state["last_sinkhorn_iterations"])


def _mode_options(labels: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of labelling mode ``labels`` with their defaults; an option of the other mode that is
    set is an error naming it (it would otherwise be silently ignored)."""
    if labels not in LABELS:
        raise ValueError(f"SeLaVi: labels must be one of {LABELS}, got {labels!r}")
    mine, other = (SCHEDULED_ONLY, ONLINE_ONLY) if labels == "scheduled" else (ONLINE_ONLY, SCHEDULED_ONLY)
    stray = sorted(k for k in other if given.get(k) is not None)
    if stray:
        owner = "online" if labels == "scheduled" else "scheduled"
        raise ValueError(f"SeLaVi: {', '.join(stray)} only apply to labels={owner!r}, not labels={labels!r}; "
                         "remove them (or set them to null)")
    return {k: default if given.get(k) is None else given[k] for k, default in mine.items()}
