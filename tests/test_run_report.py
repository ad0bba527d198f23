"""The run report: report.md lists every plotted series, every PNG is a real image. That the engine writes
it at the end of a `tools/pretrain.py` run is checked by tests/test_submitit.py's run."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vidssl.run.report import axis_label, read_scalars, run_summary, write_report

LOG = """[2026-01-01 10:00:00,000][vidssl.train.trainer][INFO] - training CRW: 1,000 parameters (1,000 trainable) on cpu, precision fp32
[2026-01-01 10:00:00,001][vidssl.train.trainer][INFO] - data: 56 clips; batch 8 per process x 1 process(es) x 1 accumulated = 8 clips per step
[2026-01-01 10:00:00,002][vidssl.train.trainer][INFO] - steps 0 -> 4 (warmup 0, cosine to 0 x LR); weight decay on weights only (not biases/norms)
[2026-01-01 10:00:00,003][vidssl.train.trainer][INFO] - checkpoints: RUN/checkpoints (every 2 steps; best.pt by the evaluator's J&F-Mean, higher is better); scalars: RUN/scalars.{csv,txt}
[2026-01-01 10:00:09,000][vidssl.train.trainer][INFO] - finished at step 4 in 9.0s: loss 1.5 (smoothed); last: RUN/checkpoints/last.pt; best (J&F-Mean 0.4): RUN/checkpoints/best.pt
"""


def _fake_run(run: Path) -> None:
    """A CRW-like run folder: scalars of 4 steps (step 2 logged twice, as a resumed run does), an evaluation."""
    rows = ["step,name,value"]
    for step in (1, 2, 2, 3, 4):
        for name, value in {"train/loss": 3.0 - 0.4 * step, "train/lr": 0.1 / step, "train/walk_accuracy": 0.1 * step,
                            "train/embedding_rankme": 10 - step, "train/embedding_rank_fraction": 0.9 - 0.1 * step,
                            "train/cycle_loss_2": 2.0 - 0.1 * step, "train/cycle_loss_3": 2.5 - 0.1 * step,
                            "train/transition_entropy": 1.0, "train/epoch": 0}.items():
            rows.append(f"{step},{name},{value}")
    rows += ["2,eval/J&F-Mean,0.3", "4,eval/J&F-Mean,0.4"]
    run.mkdir(parents=True)
    (run / "scalars.csv").write_text("\n".join(rows) + "\n")
    (run / "pretrain.log").write_text(LOG)


def _check_pngs(report) -> None:
    assert report.figures
    text = report.path.read_text()
    for png, series in report.figures.items():
        assert f"]({png.name})" in text
        for name in series:  # every plotted series is named in the report
            assert f"`{name}`" in text
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300
        assert png.stat().st_size > 15_000  # axes, curves and labels, not an empty canvas


def test_report_lists_every_series_and_writes_real_pngs(tmp_path):
    run = tmp_path / "run"
    _fake_run(run)
    report = write_report(run)
    by_name = {png.name: series for png, series in report.figures.items()}
    assert by_name == {
        "report_loss_lr.png": ["train/loss", "train/lr"],
        "report_monitors.png": ["train/cycle_loss_2", "train/cycle_loss_3", "train/embedding_rank_fraction",
                                "train/embedding_rankme", "train/transition_entropy"],
        "report_diagnostics.png": ["train/walk_accuracy"],
        "report_eval.png": ["eval/J&F-Mean"],
    }
    _check_pngs(report)
    text = report.path.read_text()
    assert "training CRW: 1,000 parameters" in text and "checkpoints: RUN/checkpoints" in text
    assert "finished at step 4 in 9.0s" in text
    # the resumed step keeps its later value; the last-values table shows it
    steps, values = read_scalars(run / "scalars.csv")["train/loss"]
    assert steps == [1, 2, 3, 4] and values == pytest.approx([2.6, 2.2, 1.8, 1.4])
    assert "| `eval/J&F-Mean` | 4 | 0.4 | 0.3 | 0.4 |" in text


def test_summary_of_a_resumed_run_is_its_last_start(tmp_path):
    (tmp_path / "pretrain.log").write_text(LOG + LOG.replace("steps 0 -> 4", "steps 4 -> 8").replace(
        "finished at step 4", "finished at step 8"))
    start, end = run_summary(tmp_path)
    assert len(start) == 4 and start[2].startswith("steps 4 -> 8") and end.startswith("finished at step 8")
    assert run_summary(tmp_path / "absent") == ([], None)


def test_axis_labels_carry_units():
    assert axis_label("train/embedding_rankme") == "RankMe (effective dimensions)"
    assert axis_label("train/cluster_min").startswith("size (fraction of clips)")
    assert axis_label("train/cycle_loss_5") == "cycle loss (nats)"
    assert axis_label("eval/J&F-Mean") == "J&F-Mean (fraction, higher is better)"


def test_report_of_a_folder_without_scalars_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="scalars.csv"):
        write_report(tmp_path)
