"""The learning-curve plot reads a run's metrics log and writes a PNG; a missing log is a typed error."""

from __future__ import annotations

import json

import pytest

from activation_oracles.errors import DataError
from activation_oracles.evals.learning_curve import plot, read_metrics


def test_plot_writes_a_png(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 30)] + [{"step": 10, "eval/yes_no_acc": 0.6},
                                                                    {"step": 20, "eval/yes_no_acc": 0.7}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot(tmp_path, tmp_path / "curve.png", extra={"shuffled": [(10, 0.5), (20, 0.5)]})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_metrics(tmp_path)) == len(rows)


def test_missing_or_broken_log_is_a_typed_error(tmp_path):
    with pytest.raises(DataError, match="metrics log"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="metrics log"):
        read_metrics(tmp_path)
