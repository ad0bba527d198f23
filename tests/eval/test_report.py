import json

import numpy as np
import torch

from vidssl.eval.report import format_table, write_metrics


def test_write_metrics_plain_json(tmp_path):
    path = write_metrics(tmp_path / "o", {"J&F-Mean": np.float32(0.5), "R@1": torch.tensor(0.25)}, "t")
    assert json.loads(path.read_text()) == {"J&F-Mean": 0.5, "R@1": 0.25}
    assert (tmp_path / "o" / "metrics.txt").read_text() == "t\n"


def test_format_table_aligns_columns():
    text = format_table([{"a": 1.23456, "bb": "x"}, {"a": 10.0, "bb": "yy"}], precision=2)
    lines = text.splitlines()
    assert lines[0] == "    a | bb" and lines[2] == " 1.23 |  x" and lines[3] == "10.00 | yy"
