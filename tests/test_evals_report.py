"""Audit reports and their statistics: aggregates, AUROC, bootstrap, the files an audit writes."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from activation_oracles.errors import DataError, OutputDirError
from activation_oracles.evals.report import (aggregate, combined_markdown, format_accuracy, load_results,
                                              prepare_out_dir, write_report)
from activation_oracles.evals.stats import auroc, auroc_row, bootstrap_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHANCE = {"open": 0.0, "choice": 0.25}


def row(method: str, mode: str, kind: str, correct: bool, organism: str = "org_a", i: int = 0) -> dict:
    return {"id": f"{organism}-{i}", "organism": organism, "method": method, "mode": mode, "kind": kind,
            "correct": correct, "truth": "t", "answer": "t" if correct else "x", "p_truth": 0.5}


def rows_of(method: str, mode: str, kind: str, correct: int, n: int, organism: str = "org_a") -> list[dict]:
    return [row(method, mode, kind, i < correct, organism, i) for i in range(n)]


def sample_rows() -> list[dict]:
    """Deliberately shuffled, so the tests see aggregate's ordering rather than the input's."""
    rows = (rows_of("oracle", "full", "open", 5, 10) + rows_of("oracle", "token", "open", 0, 20)
            + rows_of("probe", "segment", "choice", 19, 40) + rows_of("blackbox:direct", "-", "choice", 3, 4)
            + rows_of("oracle", "full", "choice", 3, 4) + rows_of("my_new_method", "full", "open", 1, 2))
    random.Random(0).shuffle(rows)
    return rows


def by_key(aggs: list[dict], organism: str = "all") -> dict[tuple[str, str, str], dict]:
    return {(a["method"], a["mode"], a["kind"]): a for a in aggs if a["organism"] == organism}


# -- aggregate -----------------------------------------------------------------------------------------

def test_aggregate_wilson_on_known_counts() -> None:
    aggs = by_key(aggregate(sample_rows(), CHANCE))
    half = aggs[("oracle", "full", "open")]
    assert (half["correct"], half["n"], half["accuracy"]) == (5, 10, 0.5)
    assert (round(half["ci_low"], 4), round(half["ci_high"], 4)) == (0.2366, 0.7634)
    none = aggs[("oracle", "token", "open")]
    assert (none["correct"], none["n"], none["accuracy"], none["ci_low"]) == (0, 20, 0.0, 0.0)
    assert 0.1 < none["ci_high"] < 0.2  # Wilson 0/20 upper bound is 16.1%, not the Wald 0


def test_aggregate_groups_orders_and_sets_chance() -> None:
    aggs = aggregate(sample_rows(), {"choice": 0.25})
    assert [(a["method"], a["mode"], a["kind"]) for a in aggs] == [
        ("oracle", "full", "open"), ("oracle", "full", "choice"), ("oracle", "token", "open"),
        ("blackbox:direct", "-", "choice"), ("probe", "segment", "choice"), ("my_new_method", "full", "open")]
    assert {a["organism"] for a in aggs} == {"all"}  # one organism: no per-organism block
    assert [a["chance"] for a in aggs] == [None, 0.25, None, 0.25, 0.25, None]
    assert sum(a["n"] for a in aggs) == len(sample_rows())
    assert set(aggs[0]) == {"organism", "method", "mode", "kind", "correct", "n", "accuracy", "ci_low", "ci_high",
                            "chance"}


def test_aggregate_per_organism_when_several() -> None:
    rows = rows_of("oracle", "full", "open", 2, 4, "org_b") + rows_of("oracle", "full", "open", 1, 4, "org_a")
    aggs = aggregate(rows, CHANCE)
    assert [(a["organism"], a["correct"], a["n"]) for a in aggs] == [("all", 3, 8), ("org_a", 1, 4), ("org_b", 2, 4)]


def test_aggregate_is_deterministic_and_rejects_bad_rows() -> None:
    assert aggregate(sample_rows(), CHANCE) == aggregate(list(reversed(sample_rows())), CHANCE)
    bad = row("oracle", "full", "open", True)
    del bad["kind"]
    with pytest.raises(DataError, match="kind"):
        aggregate([bad], CHANCE)
    with pytest.raises(DataError, match="bool"):
        aggregate([dict(row("oracle", "full", "open", True), correct="yes")], CHANCE)


def test_format_accuracy() -> None:
    assert format_accuracy({"accuracy": 0.475, "ci_low": 0.3292, "ci_high": 0.6254}) == "47.5% [32.9, 62.5]"


# -- AUROC and bootstrap -------------------------------------------------------------------------------

def test_auroc_known_scores() -> None:
    assert auroc([0.9, 0.8, 0.7], [0.1, 0.2]) == 1.0
    assert auroc([0.1, 0.2], [0.9, 0.8, 0.7]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5
    # By hand: 0.9 beats all 3 (3); 0.6 beats 0.4 and 0.1 (2); 0.4 beats 0.1 and ties 0.4 (1.5): 6.5 / 9.
    assert auroc([0.9, 0.6, 0.4], [0.7, 0.4, 0.1]) == pytest.approx(6.5 / 9)


def test_auroc_matches_pairwise_definition() -> None:
    rng = random.Random(1)
    pos = [rng.randint(0, 5) for _ in range(30)]  # small integer range: many ties
    neg = [rng.randint(0, 5) for _ in range(25)]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert auroc(pos, neg) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_auroc_empty_raises() -> None:
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        auroc([], [0.1])
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        auroc([0.1], [])


def test_bootstrap_interval_deterministic_and_covers_estimate() -> None:
    rng = random.Random(2)
    pos = [rng.gauss(1.0, 1.0) for _ in range(60)]
    neg = [rng.gauss(0.0, 1.0) for _ in range(60)]
    first = bootstrap_interval(auroc, pos, neg, n_boot=300, seed=7)
    assert first == bootstrap_interval(auroc, pos, neg, n_boot=300, seed=7)
    assert first != bootstrap_interval(auroc, pos, neg, n_boot=300, seed=8)
    lo, hi = first
    assert 0.0 <= lo < auroc(pos, neg) < hi <= 1.0
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lo, hi = bootstrap_interval(mean, pos, n_boot=300, seed=0, level=0.9)
    assert lo < mean(pos) < hi


def test_bootstrap_interval_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bootstrap_interval(auroc, [1.0], [], n_boot=10)
    with pytest.raises(ValueError):
        bootstrap_interval(auroc, [1.0], [0.0], n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_interval(auroc, [1.0], [0.0], level=1.0)


def test_auroc_row() -> None:
    r = auroc_row([0.9, 0.6, 0.4, 0.8], [0.7, 0.4, 0.1, 0.2], n_boot=200, seed=3)
    assert set(r) == {"auroc", "ci_low", "ci_high", "n_pos", "n_neg"}
    assert (r["n_pos"], r["n_neg"]) == (4, 4)
    assert r["ci_low"] <= r["auroc"] <= r["ci_high"]
    assert r == auroc_row([0.9, 0.6, 0.4, 0.8], [0.7, 0.4, 0.1, 0.2], n_boot=200, seed=3)


# -- files ---------------------------------------------------------------------------------------------

def test_write_report_files(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    rows = sample_rows()
    paths = write_report(out, task="hidden_goal", config={"oracle": "runs/x", "n": 40, "path": Path("a/b")},
                         rows=rows, chance=CHANCE, notes=["a note"], extra={"probe_auroc": 0.9})
    assert set(paths) == {"results", "report", "plot_open", "plot_choice"}
    assert all(p.parent == out for p in paths.values())

    results = json.loads(paths["results"].read_text())
    assert set(results) == {"task", "config", "chance", "rows", "aggregates", "notes", "extra"}
    assert results["task"] == "hidden_goal" and results["rows"] == rows and results["notes"] == ["a note"]
    assert results["config"]["path"] == str(Path("a/b")) and results["extra"] == {"probe_auroc": 0.9}
    assert results["aggregates"] == aggregate(rows, CHANCE)
    assert load_results(paths["results"]) == results == load_results(out)

    md = paths["report"].read_text()
    assert md.startswith("# Audit: hidden_goal")
    assert "- oracle: runs/x" in md and "- n: 40" in md
    assert "| method | mode | open | n | choice | n |" in md
    assert "| oracle | full | 50.0% [23.7, 76.3] | 10 | 75.0% [30.1, 95.4] | 4 |" in md
    assert "| oracle | token | 0.0% [0.0, 16.1] | 20 |  |  |" in md
    assert "| blackbox:direct | - |  |  | 75.0% [30.1, 95.4] | 4 |" in md
    assert "| probe | segment |  |  | 47.5% [32.9, 62.5] | 40 |" in md
    assert "Chance: open 0.0%, choice 25.0%." in md
    assert "- a note" in md

    for key in ("plot_open", "plot_choice"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_write_report_one_kind_drops_stale_plot(tmp_path: Path) -> None:
    write_report(tmp_path, task="t", config={}, rows=sample_rows(), chance=CHANCE)
    paths = write_report(tmp_path, task="t", config={}, rows=rows_of("oracle", "full", "open", 1, 3), chance=CHANCE)
    assert set(paths) == {"results", "report", "plot_open"}
    assert not (tmp_path / "plot_choice.png").exists()


def test_write_report_per_organism_section(tmp_path: Path) -> None:
    rows = rows_of("oracle", "full", "open", 2, 4, "org_b") + rows_of("oracle", "full", "open", 1, 4, "org_a")
    md = write_report(tmp_path, task="t", config={}, rows=rows, chance=CHANCE)["report"].read_text()
    assert md.index("### Organism: org_a") < md.index("### Organism: org_b")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_prepare_out_dir_refuses_existing_results(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    write_report(out, task="first_task", config={}, rows=sample_rows(), chance=CHANCE)
    before = snapshot(out)
    with pytest.raises(OutputDirError) as err:
        prepare_out_dir(out, task="second_task", overwrite=False)
    message = str(err.value)
    assert str(out) in message and "first_task" in message
    assert "--overwrite" in message and "--out" in message
    assert snapshot(out) == before

    time.sleep(0.01)
    assert prepare_out_dir(out, task="second_task", overwrite=True) == out
    assert snapshot(out) == before  # old files stay until write_report replaces them


def test_prepare_out_dir_creates_and_accepts_folder_without_results(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    assert prepare_out_dir(out, task="t", overwrite=False) == out and out.is_dir()
    (out / "notes.txt").write_text("keep")
    assert prepare_out_dir(out, task="t", overwrite=False) == out
    assert (out / "notes.txt").read_text() == "keep"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputDirError, match="not a folder"):
        prepare_out_dir(a_file, task="t", overwrite=True)


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_results(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_results(bad)
    bad.write_text(json.dumps({"task": "t", "rows": []}))
    with pytest.raises(DataError, match="lacks the keys"):
        load_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="holds a list"):
        load_results(bad)


def test_combined_markdown_has_every_task(tmp_path: Path) -> None:
    first = load_results(write_report(tmp_path / "one", task="task_one", config={}, rows=sample_rows(),
                                      chance=CHANCE)["results"])
    second = {"task": "task_two", "chance": {"open": 0.1}, "rows": rows_of("logit_lens", "token", "open", 3, 8)}
    md = combined_markdown([first, second])
    lines = md.splitlines()
    assert lines[0] == "| task | method | mode | open | choice |"
    assert "| task_one | *chance* | | 0.0% | 25.0% |" in lines
    assert "| task_one | oracle | full | 50.0% [23.7, 76.3] (10) | 75.0% [30.1, 95.4] (4) |" in lines
    assert "| task_one | blackbox:direct | - |  | 75.0% [30.1, 95.4] (4) |" in lines
    assert "| task_two | *chance* | | 10.0% | n/a |" in lines
    assert any(line.startswith("| task_two | logit_lens | token | 37.5% [") for line in lines)
    task_one_rows = [line for line in lines if line.startswith("| task_one |") and "*chance*" not in line]
    assert len(task_one_rows) == 5  # every (method, mode) pair of the first audit


def test_no_machine_paths_in_outputs(tmp_path: Path) -> None:
    # Reports are shared: they must not leak the folder they were written to.
    paths = write_report(tmp_path, task="t", config={"n": 1}, rows=sample_rows(), chance=CHANCE)
    for key in ("results", "report"):
        assert os.fspath(tmp_path) not in paths[key].read_text()
