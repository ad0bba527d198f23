"""What a run leaves beside its checkpoints (rank 0): its scalars as TensorBoard events and text, the bad
files it met, and console lines that print above the progress bar."""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vidssl.run import RunDir

log = logging.getLogger(__name__)


class RunLog:
    """Rank 0's record of a run's scalars: TensorBoard events, and the same values as text in the run folder.

    ``RUN/scalars.csv`` holds one ``step,name,value`` row per scalar, ``RUN/scalars.txt`` one line per
    logging step (``step 10 train/loss 0.6931 ...``): greppable, readable without TensorBoard. Both are
    appended to, so a resumed run continues them (steps after the last checkpoint appear twice, as in
    TensorBoard).
    """

    def __init__(self, run_dir: RunDir) -> None:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(str(run_dir.root))
        csv_path = run_dir.scalars_csv
        write_header = not csv_path.exists()
        self._csv = csv_path.open("a", newline="")
        self._rows = csv.writer(self._csv)
        if write_header:
            self._rows.writerow(["step", "name", "value"])
        self._text = run_dir.scalars_txt.open("a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.tensorboard.add_scalar(name, value, step)
            self._rows.writerow([step, name, f"{float(value):.8g}"])
        self._text.write(f"step {step} " + " ".join(f"{k} {float(v):.6g}" for k, v in scalars.items()) + "\n")
        self._csv.flush()
        self._text.flush()

    def close(self) -> None:
        self.tensorboard.close()
        self._csv.close()
        self._text.close()


class SkippedFiles:
    """The bad files a run met, each decided once: logged once with its reason, counted, listed in a CSV.

    A sample names the bad files replaced for it (``skipped_files``: ``path<TAB>segment<TAB>reason`` lines,
    see `vidssl.datasets.dataset`); `note` collects them from a batch. `merge` (every rank at the same
    step) shares the new ones between ranks, logs each once on rank 0, adds it to the dataset's
    ``failures`` (so the next epoch's workers skip it without decoding it again) and rewrites
    ``RUN/skipped.csv`` (``path,segment,reason``). Files the dataset set aside up front (``loader.index``)
    are counted and listed, not logged again; a resumed run continues its CSV.
    """

    COLUMNS = ("path", "segment", "reason")

    def __init__(self, csv_path: Path, dataset: Any, *, resumed: bool) -> None:
        self.csv_path = csv_path
        self.dataset = dataset
        self.files: dict[tuple[str, str], str] = {}  # (path, segment) -> reason
        self.pending: dict[tuple[str, str], str] = {}
        failures = getattr(dataset, "failures", None)
        if resumed and csv_path.exists():
            with csv_path.open(newline="") as f:
                self.files.update({(r["path"], r["segment"]): r["reason"] for r in csv.DictReader(f)})
            if failures is not None:  # decided in the run's earlier part: not decoded again
                for (path, _), reason in self.files.items():
                    failures.setdefault(path, reason)
        listed = {path for path, _ in self.files}
        for path, reason in (failures or {}).items():  # set aside up front
            if path not in listed:
                self.files[(path, "")] = reason

    def note(self, batch: dict[str, Any]) -> None:
        for text in batch.get("skipped_files", ()):
            for line in text.splitlines():
                path, segment, reason = line.split("\t", 2)
                if (path, segment) not in self.files:
                    self.pending[(path, segment)] = reason

    def merge(self, world: int, is_main: bool) -> None:
        new = self.pending
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, new)
            new = {key: reason for part in gathered for key, reason in part.items()}
        self.pending = {}
        new = {key: reason for key, reason in new.items() if key not in self.files}
        failures = getattr(self.dataset, "failures", None)
        for (path, segment), reason in new.items():
            self.files[(path, segment)] = reason
            if failures is not None:
                failures.setdefault(path, reason)
            if is_main:
                log.warning("skipping bad video %s%s: %s (%d bad files so far)", path,
                            f" [{segment}]" if segment else "", reason, len(self.files))
        if new and is_main:
            self.write()

    def write(self) -> None:
        with self.csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.COLUMNS)
            writer.writerows([path, segment, reason] for (path, segment), reason in sorted(self.files.items()))


class _TqdmStream:
    """A console stream whose writes go through ``tqdm.write``: log lines print above the bar, not glued to it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def console_through_tqdm(enabled: bool) -> Iterator[None]:
    """While the progress bar shows, the root logger's console handlers write through ``tqdm.write``
    (their formatters and filters stay as they are)."""
    handlers = [h for h in logging.getLogger().handlers if enabled and type(h) is logging.StreamHandler
                and h.stream in (sys.stdout, sys.stderr)]
    streams = [h.setStream(_TqdmStream(h.stream)) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)

