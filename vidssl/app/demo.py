"""``make demo``: the main job on the embedded synthetic corpus, through the public command lines.

    python -m vidssl.app.demo [out=demo_out] [quick=true]      # or: python tools/demo.py ...

Each step runs the same commands a user types, ``python -m vidssl.app.<tool> ...`` (the same as
``python tools/<tool>.py ...`` in a checkout; they are printed before they run), so the demo doubles as a
worked example, and it runs from any working directory of any install, writing only under ``out=``.
``quick=true`` runs every step and tool on a tiny corpus for a few steps each, each table's first row only
(`DemoSettings.quick`: a check that everything runs, in about a minute; its tables mean nothing). Outputs land
in one folder:

    OUT/corpus/                 the synthetic audio-visual corpus (videos, manifest, DAVIS layout)
    OUT/preview/<source>/       labelled sheets of augmented views and log-mel of aligned audio (as tools/preview.py)
    OUT/runs/<task>/            training runs (checkpoints, config.yaml, TensorBoard events)
    OUT/memdpc/                 retrieval metrics, trained vs random init
    OUT/flow/, OUT/memdpc_flow/ optical flow of the corpus (DIS); RGB, flow and R+F retrieval metrics
    OUT/crw/                    propagated masks, J&F tables, overlay GIF/MP4 and montage PNGs
    OUT/selavi/                 pseudo-labels, clustering tables, cluster grid PNGs
    OUT/summary.md              every table of the run, and links to each training run's report

Rerunning resumes: a finished training run is found complete and skipped by the engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from vidssl import viz
from vidssl.eval.report import format_table
from vidssl.run import RunDir


@dataclass
class DemoSettings:
    """The demo's budget, sized to finish in about 10 minutes on 2 CPU cores.

    Narrow encoders (``base_width``) and a few hundred steps: enough for each method to beat its
    random-init baseline on the synthetic corpus (the learning tests measure the same settings).
    """

    steps: dict[str, int] = field(default_factory=lambda: {"memdpc": 150, "crw": 200, "selavi": 40})
    overrides: dict[str, list[str]] = field(
        default_factory=lambda: {
            "memdpc": ["encoder.base_width=8", "optim.lr=2e-3", "trainer.warmup_steps=10", "trainer.batch_size=8"],
            # task=crw's own encoder, named so that `features=random` rebuilds the same one untrained
            "crw": ["encoder=resnet18_dense_reflect", "encoder.base_width=16", "optim.lr=3e-4", "trainer.batch_size=8"],
            "selavi": ["encoder.base_width=16", "trainer.warmup_steps=5", "trainer.batch_size=16"],
        }
    )
    num_workers: int = 2
    corpus: list[str] = field(default_factory=list)  # further make_synthetic arguments (key=value)
    retrieval: list[str] = field(default_factory=list)  # further evaluate.py metric=retrieval arguments
    rows: int | None = None  # the first rows of each table only (None: all)

    @classmethod
    def quick(cls) -> DemoSettings:
        """Every step and tool of the demo on 16 small videos, 2 training steps per run, each table's first row
        only (the trained model; the random-init rows rerun the same tools): a check that everything runs (an
        install, say), not a result."""
        tiny = ["trainer.batch_size=4", "trainer.warmup_steps=0"]
        return cls(
            steps={"memdpc": 2, "crw": 2, "selavi": 2},
            overrides={
                "memdpc": ["encoder.base_width=4", "optim.lr=2e-3", *tiny],
                "crw": ["encoder=resnet18_dense_reflect", "encoder.base_width=4", "optim.lr=3e-4", *tiny],
                "selavi": ["encoder.base_width=4", *tiny],
            },
            num_workers=1,
            corpus=["num_videos=16", "num_classes=4", "min_frames=48", "max_frames=48", "davis_train_per_class=1"],
            retrieval=["ks=[1,5]"],  # 12 training clips: R@10 and R@20 would exceed the gallery
            rows=1,
        )


def run_tool(tool: str, *args: str, log: list[str], threads: int | None = None) -> None:
    """Run ``python -m vidssl.app.<tool> args...`` (what ``python tools/<tool>.py`` runs), echoing the command."""
    command = [sys.executable, "-m", f"vidssl.app.{tool}", *args]
    env = dict(os.environ)
    # The commands run the vidssl this demo runs: a checkout's (tools/demo.py puts it first on the path), else
    # the installed one, whatever the working directory.
    root = Path(__file__).resolve().parents[2]
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    shown = ("" if threads is None else f"OMP_NUM_THREADS={threads} ") + "python " + " ".join(command[1:])
    print(f"\n$ {shown}", flush=True)
    log.append(shown)
    subprocess.run(command, env=env, check=True)


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def step_corpus(out: Path, log: list[str], settings: DemoSettings) -> Path:
    corpus = out / "corpus"
    if (corpus / "manifest.csv").exists():
        print(f"corpus already at {corpus}")
    else:
        run_tool("make_synthetic", f"out={corpus}", *settings.corpus, log=log)
    return corpus


def step_preview(corpus: Path, out: Path) -> list[Path]:
    """Clips as the models see them: two augmented views per clip plus the aligned audio's log-mel, in the
    labelled sheets of ``tools/preview.py`` (``OUT/preview/<source>/views.png`` and ``logmel.png``)."""
    from vidssl.datasets.dataset import VideoDataset
    from vidssl.datasets.formats import VideoEntry, synthetic
    from vidssl.datasets.samples import sample_clips
    from vidssl.datasets.sampling import ClipSampler
    from vidssl.datasets.transforms import ClipTransform, LogMel
    from vidssl.app.preview_sheets import labelled_sheets

    def dataset(root: Path, entries: list) -> VideoDataset:
        return VideoDataset(
            root=root,
            entries=entries,
            sampler=ClipSampler(num_frames=16, stride=2),
            transform=ClipTransform(size=112),
            views=2,
            audio=LogMel(n_mels=64),
        )

    entries = synthetic(corpus, split="train")[::7][:4]
    written = labelled_sheets(dataset(corpus, entries), out / "preview" / "synthetic")
    real = sample_clips()["bigbuckbunny"]
    written += labelled_sheets(dataset(real.parent, [VideoEntry(real.name)]), out / "preview" / "bigbuckbunny")
    for path in written:
        print(f"wrote {path}")
    return written


def pretrain(task: str, corpus: Path, out: Path, settings: DemoSettings, log: list[str], *extra: str,
             run_name: str | None = None) -> Path:
    run = out / "runs" / (run_name or task)
    steps = settings.steps[task]
    run_tool(
        "pretrain",
        f"task={task}",
        "dataset=synthetic",
        f"dataset.root={corpus}",
        f"trainer.max_steps={steps}",
        f"trainer.num_workers={settings.num_workers}",
        f"trainer.checkpoint_every={max(steps // 3, 1)}",
        f"trainer.out_dir={run}",
        *settings.overrides[task],
        *extra,
        log=log,
        # Loader workers already keep both cores busy decoding; a second intra-op thread only contends.
        threads=1,
    )
    return RunDir(run).last


def encoder_overrides(settings: DemoSettings, task: str) -> list[str]:
    """The task's encoder settings, so ``checkpoint=random`` builds the same encoder untrained."""
    return [o for o in settings.overrides[task] if o.startswith("encoder")]


def step_memdpc(corpus: Path, out: Path, settings: DemoSettings, log: list[str]) -> str:
    checkpoint = pretrain("memdpc", corpus, out, settings, log)
    rows = []
    for name, ckpt in (("MemDPC", checkpoint), ("random init", "random"))[:settings.rows]:
        folder = out / "memdpc" / name.replace(" ", "_")
        run_tool(
            "evaluate",
            "metric=retrieval",
            f"checkpoint={ckpt}",
            "encoder=r2d3d_18",
            *encoder_overrides(settings, "memdpc"),
            "dataset=synthetic",
            f"dataset.root={corpus}",
            f"out={folder}",
            *settings.retrieval,
            log=log,
        )
        rows.append({"features": name, **{k: v for k, v in read_metrics(folder).items() if k.startswith("R@")}})
    return "Video retrieval on the held-out split (MemDPC)\n" + format_table(rows)


def step_flow(corpus: Path, out: Path, settings: DemoSettings, log: list[str]) -> str:
    """MemDPC on optical flow, and retrieval on RGB, flow and both fused (R+F), trained vs random init.

    DIS flow, not the papers' TV-L1: TV-L1 over this corpus takes about 48 CPU-minutes here (see
    docs/methods/flow.md). Colour jitter and flip are off, as in the runs that page reports.
    """
    flow_root = out / "flow"
    run_tool("extract_flow", "dataset=synthetic", f"dataset.root={corpus}", f"out={flow_root}", "method=dis",
             f"workers={settings.num_workers}", log=log, threads=1)
    flow_data = ["dataset.modality=flow", f"dataset.flow_root={flow_root}"]
    flow_checkpoint = pretrain("memdpc", corpus, out, settings, log, *flow_data, "+task.data.transform.color_jitter=0",
                               "+task.data.transform.hue=0", "+task.data.transform.flip=0", run_name="memdpc_flow")
    rgb_checkpoint = RunDir(out / "runs" / "memdpc").last
    rows = []
    for name, rgb, flow in (("MemDPC", rgb_checkpoint, flow_checkpoint), ("random init", "random", "random")
                            )[:settings.rows]:
        folder = out / "memdpc_flow" / name.replace(" ", "_")
        run_tool("evaluate", "metric=retrieval", f"checkpoint={rgb}", f"flow_checkpoint={flow}", "encoder=r2d3d_18",
                 *encoder_overrides(settings, "memdpc"), "dataset=synthetic", f"dataset.root={corpus}",
                 f"dataset.flow_root={flow_root}", f"out={folder}", *settings.retrieval, log=log)
        metrics = read_metrics(folder)
        for stream in ("rgb", "flow", "R+F"):
            rows.append({"features": f"{name}, {stream}",
                         **{k.split("/")[1]: v for k, v in metrics.items() if k.startswith(f"{stream}/R@")}})
    return "Video retrieval with optical flow (MemDPC on RGB, on DIS flow, and both fused)\n" + format_table(rows)


def real_clip_mask(out: Path) -> tuple[Path, Path]:
    """A real sample clip and a hand-drawn first-frame mask for it (the speaker's head, an ellipse)."""
    from vidssl.datasets.decode import VideoReader
    from vidssl.datasets.formats import write_mask
    from vidssl.datasets.samples import sample_clips

    clip = sample_clips()["carphone"]  # one continuous shot (bikes.mp4 has scene cuts)
    h, w = VideoReader(clip).size
    yy, xx = np.mgrid[:h, :w]
    mask = (((yy - 0.4 * h) / (h / 4)) ** 2 + ((xx - 0.5 * w) / (w / 7)) ** 2 <= 1).astype(np.uint8)
    write_mask(out / "carphone_first.png", mask)
    return clip, out / "carphone_first.png"


def overlays(davis_root: Path, results: Path, out: Path, stem: str, split: str = "val", max_sequences: int = 4
             ) -> list[Path]:
    """The outlined overlay GIF + MP4 that propagate wrote for each of the first sequences, and one montage PNG
    of their first, middle and last frames, drawn the same way (`outlined_overlay`)."""
    from PIL import Image

    from vidssl.datasets.formats import davis, read_mask
    from vidssl.eval.overlay import outlined_overlay

    written, tiles = [], []
    for seq in davis(davis_root, split=split)[:max_sequences]:
        written += [results / seq.name / "overlay.gif", results / seq.name / "overlay.mp4"]
        masks = [read_mask(results / seq.name / (p.stem + ".png")) for p in seq.frames]
        num_objects = int(max(m.max() for m in masks))
        for t in (0, len(seq.frames) // 2, len(seq.frames) - 1):
            frame = np.asarray(Image.open(seq.frames[t]).convert("RGB"))
            tiles.append(outlined_overlay(frame, masks[t], num_objects))
    written.append(viz.save_png(out / f"{stem}_montage.png", viz.montage(tiles, ncols=3)))
    return written


def step_crw(corpus: Path, out: Path, settings: DemoSettings, log: list[str]) -> str:
    davis_root = corpus / "davis"
    # A fixed third of the val sequences keeps four propagation runs inside the demo's budget;
    # `split=val` runs the whole split.
    sets = davis_root / "ImageSets" / "2017"
    chosen = (sets / "val.txt").read_text().splitlines(True)[::3]
    (sets / "demo.txt").write_text("".join(chosen))
    # The periodic evaluator propagates a few val sequences during training and writes the overlays
    # to TensorBoard (RUN/ events, tag propagation/<sequence>).
    evaluator = f"{{_target_:vidssl.eval.periodic.PropagationEvaluator,davis_root:'{davis_root}',max_sequences:2}}"
    checkpoint = pretrain("crw", corpus, out, settings, log, f"trainer.evaluator={evaluator}",
                          f"trainer.eval_every={settings.steps['crw'] // 2}")
    rows = []
    sources = {  # name -> (results folder, propagate.py arguments)
        "CRW": ("checkpoint", ["features=checkpoint", f"checkpoint={checkpoint}"]),
        "random init": ("random", ["features=random", *encoder_overrides(settings, "crw")]),
        # the zero-padded encoder that `features=random` builds by default (and MAST trains)
        "random init, zero padding": ("random_zeros", ["features=random", "encoder.base_width=16"]),
        "Lab pixels": ("pixels", ["features=pixels"]),
    }
    for name, (folder, arguments) in list(sources.items())[:settings.rows]:
        results = out / "crw" / f"results_{folder}"
        run_tool("propagate", f"davis_root={davis_root}", "split=demo", f"out={results}", "overwrite=true", *arguments, log=log,
                 threads=1)
        run_tool("evaluate", "metric=davis", f"davis_root={davis_root}", "split=demo", f"results={results}",
                 f"out={results}", log=log)
        metrics = read_metrics(results)
        rows.append({"features": name, **{k: metrics[k] for k in ("J&F-Mean", "J-Mean", "F-Mean")}})
    written = overlays(davis_root, out / "crw" / "results_checkpoint", out / "crw", "synthetic", split="demo")
    # tracking a real video: any file plus a first-frame mask
    clip, mask = real_clip_mask(out / "crw")
    tracked = out / "crw" / "real_clip"
    run_tool("propagate", f"video={clip}", f"mask={mask}", f"out={tracked}", "overwrite=true", "features=checkpoint",
             f"checkpoint={checkpoint}", log=log, threads=1)
    written += [tracked / "overlay.gif", tracked / "overlay.mp4"]
    for path in written:
        print(f"wrote {path}")
    return (f"Label propagation on {len(chosen)} sequences of the synthetic DAVIS val split (CRW)\n"
            + format_table(rows))


def step_selavi(corpus: Path, out: Path, settings: DemoSettings, log: list[str]) -> str:
    checkpoint = pretrain("selavi", corpus, out, settings, log)
    rows = []
    # The task's heads (balanced clusters for both, so random init is not judged by a few giant clusters),
    # then balanced k-means on the pooled encoder features (method=sinkhorn: what any checkpoint gets).
    runs = (("SeLaVi heads", checkpoint, ["equipartition=true"]),
            ("random-init heads", "random", ["equipartition=true"]),
            ("balanced k-means, SeLaVi encoder", checkpoint, ["method=sinkhorn", "num_clusters=8"]),
            ("balanced k-means, random encoder", "random", ["method=sinkhorn", "num_clusters=8"]))
    for name, ckpt, method in runs[:settings.rows]:
        folder = out / "selavi" / name.replace(" ", "_").replace(",", "")
        labels = folder / "labels.csv"
        extra = encoder_overrides(settings, "selavi") if ckpt == "random" else []
        run_tool("pseudo_label", f"checkpoint={ckpt}", "task=selavi", "dataset=synthetic",
                 f"dataset.root={corpus}", f"out={labels}", *method, *extra, log=log)
        run_tool("evaluate", "metric=clusters", f"labels={labels}", f"manifest={corpus / 'manifest.csv'}",
                 f"out={folder}", log=log)
        metrics = read_metrics(folder)
        rows.append({"labels": name, **{k: metrics[k] for k in ("NMI", "ARI", "accuracy", "purity")}})
    return "Pseudo-labels against the true classes (SeLaVi)\n" + format_table(rows)


def run_demo(out: str | Path, settings: DemoSettings | None = None) -> Path:
    """Run every step; returns the summary file."""
    settings = settings or DemoSettings()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    started = time.time()
    steps = [
        ("synthetic corpus", lambda: step_corpus(out, log, settings)),
    ]
    corpus = out / "corpus"
    steps += [
        ("data pipeline preview", lambda: step_preview(corpus, out)),
        ("MemDPC pretraining + retrieval", lambda: step_memdpc(corpus, out, settings, log)),
        ("MemDPC on optical flow + two-stream retrieval", lambda: step_flow(corpus, out, settings, log)),
        ("CRW pretraining + label propagation", lambda: step_crw(corpus, out, settings, log)),
        ("SeLaVi pretraining + pseudo-labels", lambda: step_selavi(corpus, out, settings, log)),
    ]
    tables = []
    for k, (title, step) in enumerate(steps, 1):
        print(f"\n=== [{k}/{len(steps)}] {title}  ({time.time() - started:.0f} s so far)", flush=True)
        result = step()
        if isinstance(result, str):
            print("\n" + result, flush=True)
            tables.append(result)
    summary = out / "summary.md"
    # each training run's report.md (loss, LR, health monitors; written by the engine at the end of the run)
    reports = sorted((out / "runs").glob("*/report.md"))
    summary.write_text(
        "# vidssl demo\n\n"
        + "\n\n".join(f"```\n{t}\n```" for t in tables)
        + "\n\n## Training run reports\n\n"
        + "\n".join(f"- [{p.parent.name}]({p.relative_to(out)})" for p in reports)
        + "\n\n## Commands\n\n```\n"
        + "\n".join(log)
        + "\n```\n"
    )
    print(f"\n=== done in {time.time() - started:.0f} s; tables in {summary}")
    for t in tables:
        print("\n" + t)
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line: ``argv`` (default ``sys.argv[1:]``), ``out=DIR`` and ``quick=true``."""
    argv = sys.argv[1:] if argv is None else argv
    options = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = set(options) - {"out", "quick"}
    if unknown:
        raise SystemExit(f"unknown option(s) {sorted(unknown)}; usage: python -m vidssl.app.demo [out=DIR] "
                         "[quick=true]")
    run_demo(options.get("out", "demo_out"), DemoSettings.quick() if options.get("quick") else None)


if __name__ == "__main__":
    main()
