"""The oracle card's evaluation script: Wilson intervals, controls, structure and determinism."""

from __future__ import annotations

import json
import os
from pathlib import Path
from random import Random

import pytest

from activation_oracles.evals.oracle_card import (EVALS, METHODS, derangement, evaluate_oracle, render_markdown,
                                                  spqa_distractors)
from activation_oracles.evals.stats import accuracy_row, wilson_interval


def _data_dir() -> Path | None:
    env = os.environ.get("AO_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((c for c in candidates if (c / "classification").is_dir()), None)


DATA = _data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data not found (set AO_DATA_DIR)")


@pytest.mark.parametrize("correct,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                                (10, 10, 0.7225, 1.0), (81, 100, 0.7222, 0.8749)])
def test_wilson_known_values(correct, n, low, high):
    lo, hi = wilson_interval(correct, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    row = accuracy_row(3, 4)
    assert row["accuracy"] == 0.75 and row["ci_low"] <= 0.75 <= row["ci_high"]


def test_derangement_has_no_fixed_points_and_is_seeded():
    for n in (2, 3, 10, 57):
        d = derangement(n, Random(1))
        assert sorted(d) == list(range(n)) and all(d[i] != i for i in range(n))
        assert d == derangement(n, Random(1))
    assert derangement(1, Random(0)) == [0]


def test_spqa_distractors_prefer_the_same_question():
    qa = {"a": [("What persona?", "A pirate.")], "b": [("What persona?", "A chef."), ("Other thing?", "x")],
          "c": [("Unrelated words here", "y")], "d": [("What persona?", "A pirate.")],
          "e": [("What persona?", "A monk.")]}
    got = spqa_distractors(qa, "a", "What persona?", "A pirate.", Random(0), k=3)
    assert set(got[:2]) == {"A chef.", "A monk."} and "A pirate." not in got and len(got) == 3
    assert got == spqa_distractors(qa, "a", "What persona?", "A pirate.", Random(0), k=3)


def test_render_markdown():
    rows = [{"eval": "e", "method": m, **accuracy_row(5, 10), "chance": 0.5} for m in METHODS]
    table = render_markdown({"rows": rows})
    assert table.splitlines()[0] == "| evaluation | n | chance | trained | untrained | shuffled | coeff0 |"
    assert "| e | 10 | 50.0 | 50.0 [23.7, 76.3] |" in table


@pytest.fixture(scope="module")
def card_runs():
    import activation_oracles as ao
    from activation_oracles.tiny import tiny_model

    if DATA is None:
        pytest.skip("shared data not found (set AO_DATA_DIR)")
    target = tiny_model()
    oracle = ao.ActivationOracle.untrained(target)  # stands in for a trained oracle (training is too slow here)
    run = lambda: evaluate_oracle(oracle, target, data_dir=DATA, n_per_eval=4, seed=0, max_new_tokens=4,
                                details=True)  # noqa: E731
    return run(), run()


@needs_data
def test_pipeline_structure(card_runs):
    results, _ = card_runs
    json.dumps(results)  # serialisable
    rows = results["rows"]
    evals = {r["eval"] for r in rows}
    assert set(EVALS) <= evals
    assert any(e.startswith("classification_held_out/singular_plural") for e in evals)
    assert any(e.startswith("classification_held_out/headline_") for e in evals)
    for ev in evals:
        assert sorted(r["method"] for r in rows if r["eval"] == ev) == sorted(METHODS)
    for r in rows:
        assert set(r) == {"eval", "method", "correct", "n", "accuracy", "ci_low", "ci_high", "chance"}
        assert 0 <= r["correct"] <= r["n"] and r["n"] > 0
        assert r["accuracy"] == pytest.approx(r["correct"] / r["n"])
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
    by = {(r["eval"], r["method"]): r for r in rows}
    for ev in ("classification_test", "system_prompt_qa", "context_next", "context_previous"):
        assert by[(ev, "trained")]["n"] == 4
    held = [e for e in evals if e.startswith("classification_held_out/")]
    assert by[("classification_held_out", "trained")]["n"] == sum(by[(e, "trained")]["n"] for e in held)
    assert by[("system_prompt_qa", "trained")]["chance"] == 0.25
    assert by[("classification_test", "trained")]["chance"] == 0.5
    table = render_markdown(results)
    assert all(f"| {ev} |" in table for ev in EVALS)


@needs_data
def test_pipeline_is_deterministic(card_runs):
    first, second = card_runs
    assert first["rows"] == second["rows"]
    assert first["details"] == second["details"]


@needs_data
def test_shuffled_control_reads_another_context(card_runs):
    details = card_runs[0]["details"]
    for name, items in details.items():
        assert all(item["shuffled_from"] != i for i, item in enumerate(items)), name
        assert all(set(item) >= set(METHODS) for item in items)
    spqa = details["system_prompt_qa"]
    assert all(len(item["choices"]) == 4 and item["answer"] in item["choices"] for item in spqa)


@needs_data
def test_progress_bar_per_evaluation_only_when_asked(monkeypatch):
    """One bar per evaluation over examples x methods, on a terminal; none with progress=False."""
    import io

    import activation_oracles as ao
    from activation_oracles.tiny import tiny_model

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    target = tiny_model()
    oracle = ao.ActivationOracle.untrained(target)
    for enabled in (False, True):
        err = FakeTTY()
        monkeypatch.setattr("sys.stderr", err)
        evaluate_oracle(oracle, target, data_dir=DATA, n_per_eval=2, seed=0, max_new_tokens=2,
                        evals=["context_next"], progress=enabled)
        shown = err.getvalue()
        assert ("context_next" in shown and f"{2 * len(METHODS)}/{2 * len(METHODS)}" in shown) is enabled, shown


def test_describe_counts_a_content_word_of_the_text_only():
    from activation_oracles.evals.oracle_card import describe_hit

    text = "Ostriches bury their heads in the sand when frightened."
    assert describe_hit("The text is about ostriches and sand.", text)
    assert not describe_hit("The text is about something.", text)  # stop words and short words do not count
    assert not describe_hit("It describes what is happening in this text.", text)  # the question's own words
    assert not describe_hit("", text)


def test_describe_examples_read_the_texts_last_tokens(embedded_tokenizer):
    from activation_oracles.evals.oracle_card import DESCRIBE_POSITIONS, build_eval_sets
    from activation_oracles.oracle import DESCRIBE_QUESTION
    from activation_oracles.training.classification import find_shared_data

    data = find_shared_data()
    if data is None:
        pytest.skip("no shared data folder beside the checkout")
    (es,) = build_eval_sets(embedded_tokenizer, data, n_per_eval=12, evals=["describe"])
    assert es.kind == "describe" and len(es.examples) == 12
    special = set(embedded_tokenizer.all_special_ids)
    for e in es.examples:
        assert e.question == DESCRIBE_QUESTION
        assert 1 <= len(e.positions) <= DESCRIBE_POSITIONS and e.positions[-1] == len(e.context_ids) - 1
        assert not special & {e.context_ids[p] for p in e.positions}
    again = build_eval_sets(embedded_tokenizer, data, n_per_eval=12, evals=["describe"])[0]
    assert [e.answer for e in again.examples] == [e.answer for e in es.examples]
