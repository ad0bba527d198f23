"""Your own data as a task sees it: labelled sheets of the augmented views and of the log-mel audio.

`tools/preview.py dataset=… task=… out=DIR` and ``make demo`` write them: each row names its file and view, the
frames their index, and the log-mel has axes and a colour bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidssl import viz


def as_clip(video: torch.Tensor) -> torch.Tensor:
    """A sample's video as one ``C×T×H×W`` clip: blocks ``N×C×L×H×W`` (``ClipTransform(blocks=N)``) are
    laid end to end again, so a predictive-coding dataset previews like any other."""
    return video.transpose(0, 1).flatten(1, 2) if video.ndim == 5 else video


def labelled_sheets(dataset, out_dir: str | Path, *, num_clips: int = 4, max_frames: int = 8) -> list[Path]:
    """``OUT/views.png`` (a row per clip and view: "file · view k", columns the frame indices drawn) and, when
    the task loads audio, ``OUT/logmel.png`` (one panel per clip: time in frames × mel band, colour bar in the
    log-mel's units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = [dataset[i] for i in range(min(num_clips, len(dataset)))]
    rows = []
    for s in samples:
        name = Path(s["path"]).name
        for view, key in enumerate(k for k in ("video", "video2") if k in s):
            frames = viz.clip_frames(as_clip(s[key]), True)
            pick = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
            rows.append((f"{name} · view {view + 1}", [frames[i] for i in pick], pick))
    ncols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.3 * ncols + 1.5, 1.4 * len(rows) + 0.4), squeeze=False)
    for r, (label, frames, pick) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(frames):
                ax.imshow(frames[c])
                if r == 0:
                    ax.set_title(f"frame {pick[c]}", fontsize=7)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    written = [out / "views.png"]
    fig.savefig(written[0], dpi=100)
    plt.close(fig)
    if samples and all("audio" in s for s in samples):
        fig, axes = plt.subplots(len(samples), 1, figsize=(6, 1.8 * len(samples) + 0.4), squeeze=False)
        for ax, s in zip(axes[:, 0], samples):
            logmel = np.asarray(s["audio"], dtype=np.float32).squeeze()
            image = ax.imshow(logmel, origin="lower", aspect="auto", cmap="magma")
            ax.set_title(Path(s["path"]).name, fontsize=8)
            ax.set_ylabel("mel band")
            fig.colorbar(image, ax=ax, label="log-mel")
        axes[-1, 0].set_xlabel("time (spectrogram frames)")
        fig.tight_layout()
        written.append(out / "logmel.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written
