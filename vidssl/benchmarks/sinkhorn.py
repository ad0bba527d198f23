"""Time and peak memory of one Sinkhorn-Knopp call: `vidssl.losses.sinkhorn_knopp` beside the SwAV form.

    python tools/benchmark.py suite=sinkhorn [n=100000] [k=1000] [iterations=[3,10]] [dtypes=[float32,float64]]
                                             [scales=[1.0,1000.0]] [device=cpu]

Scores are cosine similarities between random unit features (128-d) and K random unit prototypes, as
SwAV/SeLaVi produce them, times `scale`: at scale 1 the SwAV form is finite and is the speed baseline;
at scale 1000 (scores up to ±1e3 order, scores/ε beyond exp's range) it overflows while vidssl's must not.

Each configuration runs in a fresh Python process, so one configuration's allocations cannot shape the
next one's figures. Inside it the two forms alternate for `repeats` timed calls (the best of each is
reported: the least disturbed by other load on shared cores). Peak memory is then measured for one
further call of each form: on CUDA `torch.cuda.max_memory_allocated` beyond what was allocated before;
on the CPU the process's peak resident size (VmHWM, reset through /proc/self/clear_refs) beyond the
resident size before the call — the scores themselves are excluded, the result and every temporary
included. Large tensors are mmap-backed in glibc, so the resident size follows live tensors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vidssl.benchmarks.memory import peak_extra_mib
from vidssl.losses import sinkhorn_knopp

__all__ = ["run", "swav_sinkhorn"]


def swav_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The SwAV form (Caron et al. 2020, `distributed_sinkhorn` on one process): exponentiate, then
    alternate column and row normalisations of the full matrix. The baseline, not for use: it
    overflows once scores/ε exceeds ~88 in fp32.

    Inputs: scores N×K. Outputs: Q N×K, rows summing to 1.
    """
    q = torch.exp(scores / epsilon).T  # (K, N)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    q *= n
    return q.T


def _scores(n: int, k: int, scale: float, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(n, 128, generator=g), dim=1)
    prototypes = F.normalize(torch.randn(k, 128, generator=g), dim=1)
    return (scale * (features @ prototypes.T)).to(device=device, dtype=dtype)


def _measure(config: dict) -> dict:
    """One configuration, in this process: interleaved timings, then peak memory of each form."""
    device = torch.device(config["device"])
    dtype = getattr(torch, config["dtype"])
    scores = _scores(config["n"], config["k"], config["scale"], dtype, device, config["seed"])
    forms = {
        "ours": lambda: sinkhorn_knopp(scores, config["epsilon"], config["iterations"]),
        "naive": lambda: swav_sinkhorn(scores, config["epsilon"], config["iterations"]),
    }
    seconds = {name: math.inf for name in forms}
    finite = {}
    for _ in range(config["repeats"]):
        for name, form in forms.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            q = form()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name] = min(seconds[name], time.perf_counter() - start)
            finite[name] = bool(torch.isfinite(q).all())
            del q
    peak = {name: peak_extra_mib(form, device) for name, form in forms.items()}
    return {"seconds": seconds, "finite": finite, "peak_mb": peak}


def run(
    *,
    n: int = 100_000,
    k: int = 1000,
    iterations: Sequence[int] = (3, 10),
    dtypes: Sequence[str] = ("float32", "float64"),
    epsilon: float = 0.05,
    scales: Sequence[float] = (1.0, 1000.0),
    repeats: int = 3,
    device: str = "cpu",
    seed: int = 0,
    task_step: bool = True,
) -> dict:
    """Benchmark every (scale, dtype, iterations) configuration; returns ``{"rows": [...], "config": {...}}``.

    Each row: name, scale, n, k, iterations, dtype, seconds, peak_mb, finite (this form), then the SwAV
    form's naive_seconds, naive_peak_mb, naive_finite at the same size, and ratio = seconds / naive_seconds.
    """
    for name in dtypes:
        if name not in ("float32", "float64"):
            raise ValueError(f"dtypes must be float32 or float64, got {name!r}")
    rows = []
    for scale in scales:
        for dtype in dtypes:
            for its in iterations:
                config = dict(
                    n=int(n), k=int(k), iterations=int(its), dtype=dtype, epsilon=float(epsilon),
                    scale=float(scale), repeats=int(repeats), device=device, seed=int(seed),
                )
                # A fresh process per configuration (see the module docstring).
                done = subprocess.run(
                    [sys.executable, "-m", "vidssl.benchmarks.sinkhorn", json.dumps(config)],
                    capture_output=True, text=True, check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"sinkhorn benchmark failed for {config}:\n{done.stderr[-2000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                ours, naive = result["seconds"]["ours"], result["seconds"]["naive"]
                rows.append({
                    "name": "sinkhorn_knopp", "scale": scale, "n": n, "k": k, "iterations": its, "dtype": dtype,
                    "seconds": ours, "peak_mb": result["peak_mb"]["ours"], "finite": result["finite"]["ours"],
                    "naive_seconds": naive, "naive_peak_mb": result["peak_mb"]["naive"],
                    "naive_finite": result["finite"]["naive"], "ratio": ours / naive,
                })
    config = dict(n=n, k=k, epsilon=epsilon, repeats=repeats, device=device, seed=seed,
                  scores="scale × cosine(unit features 128-d, unit prototypes)",
                  memory="peak extra over the call (VmHWM delta on CPU, max_memory_allocated on CUDA)")
    if task_step:
        rows.append(selavi_step(device=device))
    return {"rows": rows, "config": config}


def selavi_step(*, batch_size: int = 16, device: str = "cpu") -> dict:
    """One SeLaVi training step at the synthetic defaults (task config, encoder width 16), as a row, timed
    by the shared training-step benchmark (`vidssl.benchmarks.train.measure`, which runs the trainer's own
    `vidssl.train.step.TrainStep`; fp32, 2 untimed + 5 timed steps). The scheduled relabelling passes are
    not part of a step; decoding is not included."""
    from vidssl.benchmarks.train import measure

    row = measure(name="selavi", task="selavi", overrides=["encoder.base_width=16"], batch_size=batch_size,
                  frames=0, size=0, precision="fp32", steps=5, warmup=2, channels_last=False, device=device)
    return {"name": "selavi training step", "n": batch_size, "device": device, "seconds": row["step_s"],
            "clips_per_second": row["clips_per_s"], "peak_mb": row["peak_mem_mb"]}


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
