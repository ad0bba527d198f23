"""``VideoDataset``: decode → sample a clip → augment, skipping (and counting) bad files.

One sample is a dict (see docs/internals.md)::

    {"video":  float C×T×H×W,            # view 1 (N×C×L×H×W: blocks, with ClipTransform(blocks=N))
     "video2": float C×T×H×W,            # views=2 only: an independent augmentation of the same frames
     "audio":  float 1×n_mels×frames,    # audio configured only: log-mel of the clip's time span
     "has_audio": bool,                  # audio configured only (False: silent input, see require_audio)
     "index": int, "path": str, "label": int, "skipped": int,
     "skipped_files": str}               # the bad files replaced for this sample, one line each

Every random choice of a sample comes from a ``torch.Generator`` seeded with (seed, epoch, index), so a
sample does not depend on which worker loads it or on what was loaded before: resuming a run needs only
the sampler's position, never a replay of the batches already seen.

A file that fails (corrupt, truncated, empty, not a video, shorter than the clip, no audio where audio
is required) is recorded in ``failures`` (path -> reason) and replaced by another index drawn from the
same generator; ``skipped`` in the sample says how many bad files were met producing it and
``skipped_files`` names them (``path<TAB>segment<TAB>reason`` lines), so that the training loop, which
sees the samples of every worker, logs each bad file once per run and counts them (`vidssl.train.run_log.SkippedFiles`).
After ``max_failures`` bad draws in a row the dataset stops with an error instead of looping forever.

Evaluation must never score one clip in place of another: with ``substitute=False`` a bad file gives a
marker sample ``{"index", "path", "label", "error": reason}`` instead, and `collate_kept` leaves it out
of the batch and lists it under ``"dropped"``, so the evaluation knows which videos it did not score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from vidssl.datasets.decode import VideoDecodeError, VideoReader
from vidssl.datasets.formats import VideoEntry
from vidssl.datasets.sampling import ClipTooShortError, clip_time_span

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
NO_AUDIO = "no audio stream, and audio is required (loader.require_audio=false gives silence instead)"


class BadSampleError(RuntimeError):
    """Too many bad files were met in a row: the dataset cannot produce a sample."""


def segment(entry: VideoEntry) -> str:
    """``start-end s`` of a trimmed row (``end``: to the end of the file); empty for a whole file."""
    if entry.start is None and entry.end is None:
        return ""
    end = "end" if entry.end is None else f"{entry.end:g}"
    return f"{entry.start or 0:g}-{end} s"


def sample_seed(seed: int, epoch: int, index: int, attempt: int = 0) -> int:
    """A 63-bit seed for one (seed, epoch, index, attempt), well mixed so neighbours differ."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + attempt) & (
        (1 << 64) - 1
    )
    # splitmix64 finaliser: nearby inputs give unrelated seeds.
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & ((1 << 64) - 1)
    x ^= x >> 31
    return x & ((1 << 63) - 1)


class VideoDataset(Dataset):
    """Clips from a list of videos (files, or frame folders), augmented per view.

    Args:
        root: dataset root; entry paths are relative to it.
        entries: the videos (from a loader in ``vidssl.datasets.formats``).
        sampler: a clip layout from ``vidssl.datasets.sampling`` (frame indices per sample).
        transform: frames ``uint8 T×H×W×3`` + generator → ``float C×T×H×W``.
        views: 1, or 2 for two independent augmentations of the same frames (``video2``).
        audio: a ``LogMel`` (or any waveform → features callable) to load the aligned audio; None: none.
        audio_rate: sample rate the waveform is resampled to before ``audio``.
        audio_seconds: fixed audio window centred on the clip; None: exactly the clip's time span
            (set it when videos differ in fps, so every sample's audio has the same length).
        require_audio: a video without sound is a bad sample (True) or gets silence (False).
        backend: decoder for files (``"av"`` or ``"decord"``); folders always use ``"frames"``.
        decode_threads: decoder threads per reader (0: one per core); 1 suits loader workers, which
            already run one decode per core.
        frames_fps: the frame rate assumed for frame folders.
        seed: base seed of every random choice.
        max_failures: bad draws in a row before giving up.
        index: a metadata cache file (``vidssl.datasets.index``): when given, every file is probed once
            (in parallel, reused while its size and mtime hold) and files that cannot be read or are
            shorter than the sampler's span are set aside before training, logged and counted in
            ``failures``, instead of being met one by one mid-epoch.
        modality: None (the entries' own ``modality``, which the dataset loader set from
            ``dataset.modality``), or "rgb"/"flow" to assert it. For flow entries the transform is replaced
            by its flow version (`vidssl.datasets.flow.for_flow`: no colour jitter, a flip negates x).
        substitute: a bad file is replaced by another drawn index (True: training) or gives a marker
            sample with its ``error`` that `collate_kept` drops (False: evaluation, which must not score
            one clip in place of another).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        entries: Sequence[VideoEntry],
        sampler: Callable[[int, torch.Generator], list[int]],
        transform: Transform,
        views: int = 1,
        audio: Callable[[torch.Tensor], torch.Tensor] | None = None,
        audio_rate: int = 16000,
        audio_seconds: float | None = None,
        require_audio: bool = True,
        backend: str = "av",
        decode_threads: int = 1,
        frames_fps: float = 25.0,
        seed: int = 0,
        max_failures: int = 50,
        index: str | Path | None = None,
        modality: str | None = None,
        substitute: bool = True,
    ) -> None:
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        if not entries:
            raise ValueError(f"no videos to load under {root}")
        self.root = Path(root)
        self.entries = list(entries)
        missing = [e.path for e in self.entries if not (self.root / e.path).exists()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.entries)} videos listed for {self.root} do not exist, "
                f"e.g. {missing[:5]}"
            )
        if modality not in (None, "rgb", "flow"):
            raise ValueError(f"modality must be 'rgb' or 'flow', got {modality!r}")
        modalities = {e.modality for e in self.entries}
        if len(modalities) > 1 or (modality is not None and modalities != {modality}):
            raise ValueError(f"the entries under {self.root} are {sorted(modalities)}, not {modality or 'one modality'}: "
                             "build flow entries with dataset.modality=flow (the dataset loader decides it)")
        (self.modality,) = modalities
        if self.modality == "flow":
            from vidssl.datasets.flow import for_flow

            transform = for_flow(transform)
        self.sampler = sampler
        self.transform = transform
        self.views = views
        self.audio = audio
        self.audio_rate = audio_rate
        self.audio_seconds = audio_seconds
        self.require_audio = require_audio
        self.backend = backend
        self.decode_threads = decode_threads
        self.frames_fps = frames_fps
        self.seed = seed
        self.max_failures = max_failures
        self.substitute = substitute
        self.epoch = 0
        self.failures: dict[str, str] = {}  # path -> reason, in this process
        if index is not None:
            self._screen(Path(index))

    def _screen(self, index: Path) -> None:
        """Set aside, from the (cached) metadata index, the files that cannot serve the task: unreadable,
        shorter than the sampler's span, or without sound where audio is required. One line says how many
        and why."""
        from vidssl.datasets.index import build_index

        files = [e.path for e in self.entries if not (self.root / e.path).is_dir()]
        metas = build_index(self.root, files, index, backend=self.backend)
        span = getattr(self.sampler, "span", 1)
        kinds: dict[str, int] = {}
        for path, meta in metas.items():
            if isinstance(meta, str):
                kind, reason = "unreadable", meta
            elif meta.num_frames < span:
                kind, reason = "too short", f"{meta.num_frames} frames, but a clip spans {span}"
            elif self.audio is not None and self.require_audio and not meta.has_audio:
                kind, reason = "without audio", NO_AUDIO
            else:
                continue
            self.failures[path] = reason
            kinds[kind] = kinds.get(kind, 0) + 1
        if self.failures:
            log.warning("set aside %d of %d videos before training (%s; index %s), e.g. %s", len(self.failures),
                        len(self.entries), ", ".join(f"{n} {kind}" for kind, n in kinds.items()), index,
                        dict(list(self.failures.items())[:3]))
        if len(self.failures) == len(self.entries):
            hint = (" No video has sound: pass loader.require_audio=false to train on silence."
                    if kinds.get("without audio") else "")
            raise BadSampleError(f"no usable video under {self.root}: {dict(list(self.failures.items())[:3])}.{hint}")

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self.epoch = epoch

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    def __getitem__(self, index: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
        candidate = index
        met: list[VideoEntry] = []  # the bad files met producing this sample
        for skipped in range(self.max_failures):
            entry = self.entries[candidate]
            if entry.path not in self.failures:
                try:
                    sample = self._load(entry, generator)
                except (VideoDecodeError, ClipTooShortError, OSError) as err:  # a bug elsewhere still raises
                    self._record_failure(entry.path, err)
                else:
                    sample.update(index=candidate, path=entry.path, label=entry.label, skipped=skipped,
                                  skipped_files=self._describe(met))
                    return sample
            if not self.substitute:
                return {"index": index, "path": entry.path, "label": entry.label, "error": self.failures[entry.path]}
            met.append(entry)
            # Draw the replacement from the sample's own generator: deterministic for resume.
            candidate = int(torch.randint(0, len(self.entries), (), generator=generator))
        raise BadSampleError(
            f"{self.max_failures} bad videos in a row under {self.root} (last: {entry.path}); "
            f"{len(self.failures)} bad files so far, e.g. {dict(list(self.failures.items())[:3])}"
        )

    def _describe(self, entries: list[VideoEntry]) -> str:
        """The bad files met, one ``path<TAB>segment<TAB>reason`` line each (segment: ``start-end`` seconds of
        a trimmed row, else empty): a string, so that ``default_collate`` passes it from the workers."""
        return "\n".join(f"{e.path}\t{segment(e)}\t{self.failures[e.path]}".replace("\n", " ") for e in entries)

    def _record_failure(self, path: str, err: Exception) -> None:
        # Logged by whoever collects the samples (the training loop, the evaluation), once per run: a
        # worker process here only knows its own share of the files.
        self.failures[path] = f"{type(err).__name__}: {err}"
        log.debug("bad video %s: %s", path, err)

    def _reader(self, entry: VideoEntry) -> VideoReader:
        path = self.root / entry.path
        if path.is_dir():
            return VideoReader(path, backend="frames", fps=self.frames_fps)
        return VideoReader(path, backend=self.backend, num_threads=self.decode_threads)

    def _load(self, entry: VideoEntry, generator: torch.Generator) -> dict[str, Any]:
        reader = self._reader(entry)
        try:
            fps = reader.fps
            first = 0 if entry.start is None else int(round(entry.start * fps))
            last = reader.num_frames if entry.end is None else min(reader.num_frames, int(round(entry.end * fps)))
            indices = [first + i for i in self.sampler(last - first, generator)]
            frames = reader.get_frames(indices)
            sample: dict[str, Any] = {"video": self.transform(frames, generator)}
            if self.views == 2:
                sample["video2"] = self.transform(frames, generator)
            if self.audio is not None:
                sample.update(self._load_audio(reader, entry, indices, fps))
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
        return sample

    def _load_audio(self, reader: VideoReader, entry: VideoEntry, indices: list[int], fps: float) -> dict:
        start, duration = clip_time_span(indices, fps)
        if self.audio_seconds is not None:
            start = max(0.0, start + duration / 2 - self.audio_seconds / 2)
            duration = self.audio_seconds
        if reader.has_audio:
            waveform = reader.get_audio(start, duration, self.audio_rate)
        elif self.require_audio:
            raise VideoDecodeError(self.root / entry.path, NO_AUDIO)
        else:
            waveform = torch.zeros(1, int(round(duration * self.audio_rate)))
        return {"audio": self.audio(waveform), "has_audio": bool(reader.has_audio)}


def collate_kept(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate the good samples; list the marker samples of bad files (``substitute=False``) under "dropped".

    Outputs: ``default_collate`` of the samples without an ``error`` (no other key when none is left),
    plus ``"dropped": [(index, path, reason), ...]``.
    """
    kept = [s for s in samples if "error" not in s]
    batch: dict[str, Any] = default_collate(kept) if kept else {}
    batch["dropped"] = [(s["index"], s["path"], s["error"]) for s in samples if "error" in s]
    return batch
