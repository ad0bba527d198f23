"""A look at what the data pipeline feeds a model: contact sheets of augmented views and log-mel images.

Preview your own data as a task sees it: the augmented views and the log-mel audio, labelled.

    python tools/preview.py task=simclr|selavi|dpc|… dataset=… dataset.root=DIR out=DIR [num_clips=4]
    python -m vidssl.app.preview ...                           # the same, from any install

Writes ``OUT/views.png`` (a row per clip and view, named, frames numbered) and, for a task that loads audio,
``OUT/logmel.png`` (axes and a colour bar). The sheets are drawn by ``vidssl.app.preview_sheets``, for this tool and ``make demo``.
"""

from __future__ import annotations


import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.app.errors import check_overrides, one_line_errors
from vidssl.app.preview_sheets import labelled_sheets
from vidssl.configs import CONFIG_DIR
from vidssl.datasets.dataset import VideoDataset


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
