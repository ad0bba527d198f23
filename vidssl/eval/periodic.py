"""Periodic evaluation during training: label propagation on a few DAVIS-layout sequences.

`PropagationEvaluator` is the engine's ``evaluator(task, step, writer) -> {metric: value}``: it takes
``task.encoder`` as the feature source (whichever method trains it), propagates the first-frame
annotation of the first ``max_sequences`` sequences of a split with `vidssl.eval.propagate`, scores
them with `vidssl.eval.davis` exactly as the full evaluation does (the annotated frames without the
first and the last), and writes a montage of the propagated masks over the frames to TensorBoard
(one image per sequence). Nothing touches the disk; a full benchmark is ``tools/propagate.py`` +
``tools/evaluate.py``.

Config (Hydra), e.g. ``trainer.eval_every=100`` and
``trainer.evaluator={_target_: vidssl.eval.periodic.PropagationEvaluator, davis_root: DIR}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidssl.datasets.formats import DavisSequence, davis, read_mask
from vidssl.eval.davis import VOID, evaluate_sequence, statistics
from vidssl.eval.features import AUTO, EncoderFeatures
from vidssl.eval.propagate import FeatureFn, propagate_labels, read_frame
from vidssl.run import Exports
from vidssl.viz import montage, overlay_masks


class PropagationEvaluator:
    """Propagate with the task's encoder on a few sequences; report J&F and draw the masks.

    Arguments:
      davis_root: a DAVIS-2017 layout (JPEGImages/, Annotations/, ImageSets/2017/)
      split: which ImageSets list to read
      max_sequences: evaluate only the first this many sequences of the split (None: all)
      max_frames: propagate only the first this many frames of each sequence (None: all); the
        evaluated frames are the annotated ones among them, without the first and the last
      overlay_frames: frames per sequence in the TensorBoard montage (evenly spaced)
      resolution: the DAVIS resolution folder
      clip_len: a video encoder sees each frame as a static clip of this many frames
      layer: the encoder's feature map (`vidssl.eval.features.EncoderFeatures`; "auto": layer3 of
        the stride-8 frame ResNet, as videowalk's evaluation, the output when the task is MAST)
      protocol: `propagate_labels`'s keyword arguments (n_context, topk, radius, temperature,
        restrict_first, window, pad_first, downsample, tile); its defaults (videowalk's) otherwise
    Call: ``(task, step, writer) -> {"J&F-Mean", "J-Mean", "F-Mean"}`` (means over the objects);
      ``writer`` (a SummaryWriter or None) receives one image per sequence, ``propagation/<name>``:
      ``overlay_frames`` frames side by side with the propagated masks drawn over them.
    """

    # What the trainer's best.pt is best at when trainer.best_metric is left at "auto".
    best_metric = "J&F-Mean"
    best_mode = "max"

    def __init__(
        self,
        davis_root: str | Path,
        split: str = "val",
        *,
        max_sequences: int | None = 4,
        max_frames: int | None = None,
        overlay_frames: int = 6,
        resolution: str = "480p",
        clip_len: int = 1,
        layer: str = "auto",
        **protocol: Any,
    ) -> None:
        if max_sequences is not None and max_sequences < 1:
            raise ValueError(f"PropagationEvaluator max_sequences must be ≥ 1 or None, got {max_sequences}")
        if max_frames is not None and max_frames < 3:
            raise ValueError(f"PropagationEvaluator max_frames must be ≥ 3 (first, evaluated, last) or None, "
                             f"got {max_frames}")
        if overlay_frames < 1:
            raise ValueError(f"PropagationEvaluator overlay_frames must be ≥ 1, got {overlay_frames}")
        # Read the split now: a wrong path fails when the run is built, not at the first evaluation.
        sequences = davis(davis_root, split=split, resolution=resolution)
        if not sequences:
            raise ValueError(f"{davis_root}: split {split!r} lists no sequences")
        self.sequences: list[DavisSequence] = sequences[:max_sequences]
        self.max_frames = max_frames
        self.overlay_frames = overlay_frames
        self.clip_len = clip_len
        self.layer = layer
        self.protocol = protocol

    def __call__(self, task: nn.Module, step: int, writer: Any = None) -> dict[str, float]:
        encoder = task.encoder
        weight = next(iter(encoder.parameters()), None)  # a parameter-free encoder runs on the CPU
        device = weight.device if weight is not None else torch.device("cpu")
        layer = self.layer
        if layer == AUTO:  # what a checkpoint of this task would export (MAST: its output)
            layer = Exports.of_task(task, {}).feature_layer or AUTO
        features = EncoderFeatures(encoder, clip_len=self.clip_len, device=device, layer=layer)
        return self.evaluate(features, step, writer)

    def evaluate(self, feature_fn: FeatureFn, step: int = 0, writer: Any = None) -> dict[str, float]:
        """The same evaluation for any feature source (e.g. `vidssl.eval.features.PixelFeatures`).

        Inputs:  feature_fn, uint8 frame H×W×3 → D×h×w features (L2-normalised over D)
        Outputs: {"J&F-Mean", "J-Mean", "F-Mean"}
        """
        j_means, f_means = [], []  # one entry per object, as the DAVIS means are taken
        for sequence in self.sequences:
            frames, masks = self._propagate(sequence, feature_fn)
            j, f = self._score(sequence, masks)
            j_means += [statistics(values)[0] for values in j]
            f_means += [statistics(values)[0] for values in f]
            if writer is not None:
                # one montage per sequence: DAVIS sequences differ in frame size
                picks = np.linspace(0, len(frames) - 1, min(self.overlay_frames, len(frames))).round().astype(int)
                row = [overlay_masks(frames[i], masks[i]) for i in picks]
                writer.add_image(f"propagation/{sequence.name}", montage(row, ncols=len(row)), step,
                                 dataformats="HWC")
        if not j_means:
            raise ValueError(f"no objects in the first annotations of {[s.name for s in self.sequences]}")
        j_mean, f_mean = float(np.mean(j_means)), float(np.mean(f_means))
        return {"J&F-Mean": (j_mean + f_mean) / 2, "J-Mean": j_mean, "F-Mean": f_mean}

    def _propagate(self, sequence: DavisSequence, feature_fn: FeatureFn) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Frames (uint8 H×W×3) and propagated label maps (uint8 H×W) of one sequence."""
        paths = sequence.frames[: self.max_frames]
        if not sequence.annotations or sequence.annotations[0].stem != paths[0].stem:
            raise FileNotFoundError(f"sequence {sequence.name!r} has no annotation of its first frame "
                                    f"{paths[0].name}")
        frames = [read_frame(p) for p in paths]
        first_mask = read_mask(sequence.annotations[0])
        with torch.inference_mode():
            maps = propagate_labels(lambda t: feature_fn(frames[t]), first_mask, len(frames),
                                    name=sequence.name, **self.protocol)
            masks = [m.numpy() for m in maps]
        return [f.numpy() for f in frames], masks

    def _score(self, sequence: DavisSequence, masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-object, per-frame J and F on the annotated frames among the propagated ones."""
        index = {p.stem: t for t, p in enumerate(sequence.frames[: len(masks)])}
        annotated = [a for a in sequence.annotations if a.stem in index][1:-1]
        if not annotated:
            raise ValueError(f"sequence {sequence.name!r}: fewer than 3 annotated frames among the "
                             f"{len(masks)} propagated; raise max_frames")
        first = read_mask(sequence.annotations[0])
        num_objects = int(np.where(first == VOID, 0, first).max())
        gt = np.stack([read_mask(a) for a in annotated])
        result = np.stack([masks[index[a.stem]] for a in annotated])
        return evaluate_sequence(gt, result, num_objects, name=sequence.name)
