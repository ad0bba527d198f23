"""A look at what the data pipeline feeds a model: contact sheets of augmented views and log-mel images.

Preview your own data as a task sees it: the augmented views and the log-mel audio, labelled.

    python tools/preview.py task=simclr|selavi|dpc|… dataset=… dataset.root=DIR out=DIR [num_clips=4]
    python -m vidssl.app.preview ...                           # the same, from any install

Writes ``OUT/views.png`` (a row per clip and view, named, frames numbered) and, for a task that loads audio,
``OUT/logmel.png`` (axes and a colour bar). The logic is in ``vidssl.app.preview_sheets``; `preview_dataset`
(below) writes the demo's plainer sheets.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl import viz
from vidssl.app.cli import explain_instantiation_errors
from vidssl.app.errors import check_overrides, one_line_errors
from vidssl.app.preview_sheets import as_clip, labelled_sheets
from vidssl.configs import CONFIG_DIR
from vidssl.datasets.dataset import VideoDataset


def preview_dataset(dataset: VideoDataset, out_dir: str | Path, name: str, num_clips: int = 4) -> list[Path]:
    """Write ``<name>_views.png`` (one row per view of each clip, frames across time) and, when the
    dataset loads audio, ``<name>_logmel.png`` (the log-mel of each clip's aligned audio, one row each).
    """
    out = Path(out_dir)
    samples = [dataset[i] for i in range(min(num_clips, len(dataset)))]
    clips = []
    for s in samples:
        clips.append(as_clip(s["video"]))
        if "video2" in s:
            clips.append(as_clip(s["video2"]))
    written = [viz.save_png(out / f"{name}_views.png", viz.contact_sheet(clips))]
    if all("audio" in s for s in samples):
        images = [viz.spectrogram_image(s["audio"]) for s in samples]
        width = max(im.shape[1] for im in images)
        images = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
        written.append(viz.save_png(out / f"{name}_logmel.png", viz.montage(images, ncols=1)))
    return written


@hydra.main(config_path=str(CONFIG_DIR), config_name="preview", version_base="1.3")
@one_line_errors
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    dataset = VideoDataset(root=cfg.dataset.root, entries=instantiate(cfg.dataset),
                           **instantiate(cfg.task.data, _convert_="all"), backend=cfg.loader.backend,
                           require_audio=cfg.loader.require_audio, seed=cfg.seed)
    for path in labelled_sheets(dataset, cfg.out, num_clips=cfg.num_clips, max_frames=cfg.max_frames):
        print(f"wrote {path}")


def main() -> None:
    """The command line (``sys.argv``)."""
    check_overrides("preview", doc=__doc__)  # a wrong key: one line, before Hydra starts
    run()


if __name__ == "__main__":
    main()
