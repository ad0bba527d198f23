"""Convert a checkpoint of the authors' code into a vidssl checkpoint.

    python tools/convert_checkpoint.py source=videowalk|dpc|memdpc|selavi|vjepa|vjepa2 in=OFFICIAL.pth out=CKPT.pt

The result holds ``encoder``, ``model`` and ``config`` and loads with ``torch.load(weights_only=True)``;
use it as ``checkpoint=CKPT.pt`` in the evaluation tools or ``trainer.init_from=CKPT.pt``.
The logic lives in ``vidssl.convert``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidssl.app.cli import explain_instantiation_errors
from vidssl.configs import CONFIG_DIR
from vidssl.convert import convert_checkpoint


@hydra.main(config_path=str(CONFIG_DIR), config_name="convert_checkpoint", version_base="1.3")
@explain_instantiation_errors
def run(cfg: DictConfig) -> None:
    # converter options the weights cannot tell (vjepa: +num_heads=N +predictor_heads=N), when given
    options = {key: cfg[key] for key in ("num_heads", "predictor_heads") if key in cfg}
    checkpoint = convert_checkpoint(cfg.source, cfg["in"], cfg.out, **options)
    print(f"wrote {cfg.out}: {len(checkpoint.encoder)} encoder tensors, {len(checkpoint.model)} model tensors "
          f"(source={cfg.source})")


def main() -> None:
    """The command line (``sys.argv``)."""
    run()


if __name__ == "__main__":
    main()
