"""The AUROC / MC figures: drawn from results.json alone, refused for what they do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activation_oracles.errors import OutputDirError
from activation_oracles.evals.interval_plot import PLOT_FILES, plot_intervals, plot_results

PNG = b"\x89PNG\r\n\x1a\n"


def _write(folder: Path, res: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def test_each_task_gets_its_figure(tmp_path: Path) -> None:
    agg = {"pair": "a vs b", "method": "oracle", "mode": "full", "auroc": 0.6, "ci_low": 0.5, "ci_high": 0.7}
    twin = {**agg, "mode": "token", "benign_twin": {"benign_auroc": 0.55}}
    cases = {
        "diffing": {"task": "diffing", "aggregates": [agg, twin]},
        "truthfulqa": {"task": "truthfulqa", "aggregates": [agg]},
        "truthfulqa-mc": {"task": "truthfulqa-mc", "config": {"questions": 3},
                          "rows": [{"model": "base", "mc1": 0.2, "mc1_ci": [0.1, 0.3], "mc2": 0.4, "mc2_ci": [0.3, 0.5]}]},
    }
    for task, res in cases.items():
        folder = _write(tmp_path / task, res)
        (out,) = plot_results(folder)
        assert out == folder / PLOT_FILES[task] and out.read_bytes().startswith(PNG)
        assert sorted(p.name for p in folder.iterdir()) == sorted(["results.json", PLOT_FILES[task]])  # no temp file


def test_a_point_outside_its_interval_or_missing_is_drawn_without_error(tmp_path: Path) -> None:
    out = plot_intervals(tmp_path / "p.png", ["x", "y"], {"s": [(0.5, 0.6, 0.4), None]}, title="t", xlabel="v")
    assert out.read_bytes().startswith(PNG)


def test_bad_results_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(OutputDirError, match="could not be read"):
        plot_results(tmp_path)
    folder = _write(tmp_path / "acc", {"task": "taboo", "aggregates": []})
    with pytest.raises(OutputDirError, match="task 'taboo'.*accuracy audits draw their own"):
        plot_results(folder)
    (folder / "results.json").write_text("{not json")
    with pytest.raises(OutputDirError, match="could not be read"):
        plot_results(folder)
    assert [p.name for p in folder.iterdir()] == ["results.json"]
