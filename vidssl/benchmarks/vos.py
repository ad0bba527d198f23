"""Memory and speed of YouTube-VOS-style propagation on a long video (rows of ``suite=propagate``).

    python tools/benchmark.py suite=propagate vos_frames=40 [vos_height=240 vos_width=427]

A YouTube-VOS-style video (`vidssl.datasets.synthetic_benchmarks.render_vos_video`: one object from
the first frame, a second entering at a third of the video, JPEG frames and ``meta.json`` on disk)
is propagated by `vidssl.eval.vos.propagate_vos` (both objects' groups, the DAVIS protocol, the
submission written) at ``frames`` and at twice as many frames. Features: a fixed random projection of
each frame's 8×8 patches to ``dim`` channels (an encoder's cost is not what is measured). Peak extra
memory is the process's peak resident size during the whole video beyond the size before it (see
`vidssl.benchmarks.memory.peak_extra_mib`); flat in the video's length when the two rows agree.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vidssl.benchmarks.memory import peak_extra_mib
from vidssl.datasets.formats import write_mask
from vidssl.datasets.synthetic_benchmarks import render_vos_video


class PatchProjection:
    """uint8 H×W×3 → dim×ceil(H/8)×ceil(W/8): a fixed random linear map of each 8×8 patch, L2-normalised."""

    def __init__(self, dim: int = 256, stride: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(dim, 3, stride, stride, generator=g) / (3 * stride * stride) ** 0.5
        self.stride = stride

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        x = frame.permute(2, 0, 1)[None].float() / 255 - 0.5
        pad_h, pad_w = (-x.shape[2]) % self.stride, (-x.shape[3]) % self.stride
        x = F.pad(x, (0, pad_w, 0, pad_h))
        return F.normalize(F.conv2d(x, self.weight, stride=self.stride)[0], dim=0)


def write_video(root: Path, frames: int, height: int, width: int, seed: int = 0) -> None:
    """One YouTube-VOS-style video under ``root/valid`` (first masks only, as the servers' split)."""
    rng = np.random.default_rng(seed)
    images, masks, _ = render_vos_video(rng, num_frames=frames, enter=frames // 3, height=height, width=width,
                                        categories=("a", "b"))
    base = root / "valid"
    (base / "JPEGImages" / "long").mkdir(parents=True, exist_ok=True)
    objects = {}
    for obj_id in (1, 2):
        present = [f"{t:05d}" for t in range(frames) if (masks[t] == obj_id).any()]
        objects[str(obj_id)] = {"category": "a", "frames": present}
        first = int(present[0])
        write_mask(base / "Annotations" / "long" / f"{present[0]}.png",
                   np.where(masks[first] == obj_id, obj_id, 0).astype(np.uint8))
    for t in range(frames):
        Image.fromarray(images[t]).save(base / "JPEGImages" / "long" / f"{t:05d}.jpg", quality=90)
    (base / "meta.json").write_text(json.dumps({"videos": {"long": {"objects": objects}}}))


def vos_rows(*, frames: int = 40, height: int = 240, width: int = 427, dim: int = 256, n_context: int = 20,
             topk: int = 10, radius: float = 12, temperature: float = 0.05, tile: int = 8, seed: int = 0,
             memory_ok: bool = True) -> list[dict]:
    """Rows for ``frames`` and ``2 * frames``: seconds per frame and peak extra MiB of `propagate_vos`."""
    from vidssl.eval.vos import propagate_vos

    feature_fn = PatchProjection(dim, seed=seed)
    protocol = dict(n_context=n_context, topk=topk, radius=radius, temperature=temperature, tile=tile)
    rows = []
    work = Path(tempfile.mkdtemp())
    try:
        for length in (frames, 2 * frames):
            root = work / f"v{length}"
            write_video(root, length, height, width, seed)

            def run(root=root, length=length) -> None:
                with torch.inference_mode():
                    propagate_vos(root, work / f"out{length}", feature_fn, progress=False, **protocol)

            start = time.perf_counter()
            run()
            seconds = (time.perf_counter() - start) / length
            peak = peak_extra_mib(run, torch.device("cpu")) if memory_ok else None
            rows.append({"channels": dim, "method": "propagate_vos (2 objects, one entering at T/3)",
                         "frames": length, "grid": f"{-(-height // 8)}x{-(-width // 8)}",
                         "s_per_frame": round(seconds, 3),
                         "peak_extra_mib": None if peak is None else round(peak, 1)})
    finally:
        shutil.rmtree(work)
    return rows
