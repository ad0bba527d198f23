"""`VideoEntry`, one row of a dataset, and the file extensions that name videos: the type every layer of
`vidssl.datasets` reads, so it sits below all of them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VideoEntry:
    """One video (or trimmed clip) of a dataset; `path` is relative to the dataset root."""

    path: str
    label: int = -1  # -1 when unknown; only evaluation reads labels
    split: str = "train"
    start: float | None = None  # seconds; optional trimming of the video
    end: float | None = None
    # the class name behind `label` where the layout has one (check_dataset writes the name <-> index map)
    label_name: str = field(default="", compare=False)
    # "flow": `path` is a folder of extracted flow images (`vidssl.datasets.flow.flow_entries` decides it, from
    # ``dataset.modality``); the dataset reads it from here, so the modality is chosen in one place.
    modality: str = "rgb"


VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv",
)
