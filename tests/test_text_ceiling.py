"""The text-in-prompt source and the text ceilings (training/text_in_prompt.py, evals/text_ceiling.py)."""

from __future__ import annotations

from random import Random

import pytest

from activation_oracles.errors import ConfigError
from activation_oracles.evals.text_ceiling import MAX_OPEN_OPTIONS, family_text_baseline, text_baseline, text_ceiling
from activation_oracles.oracle import ActivationOracle
from activation_oracles.tiny import tiny_model
from activation_oracles.training.classification import Classification
from activation_oracles.training.text_in_prompt import TextInPrompt, with_text

TASKS = ["gmt/cities", "relations/verb_past_tense"]


def test_text_in_prompt_quotes_each_examples_own_text(embedded_tokenizer, data_dir):
    params = {"data_dir": str(data_dir / "classification"), "tasks": TASKS, "max_context_tokens": 64}
    wrapped = TextInPrompt("classification", params, layer_percents=(50.0,)).examples(embedded_tokenizer, Random(3))
    plain = Classification(**params, layer_percents=(50.0,)).examples(embedded_tokenizer, Random(3))
    for _ in range(12):
        w, p = next(wrapped), next(plain)
        text = embedded_tokenizer.decode(list(p.context_ids), skip_special_tokens=True).strip()
        assert w.question == f'Text: "{text}"\n{p.question}'
        assert (w.context_ids, w.positions, w.answer, w.layer_percent) == (p.context_ids, p.positions, p.answer,
                                                                             p.layer_percent)
        assert w.source == "text_classification" and w.meta["text_in_prompt"]


def test_text_in_prompt_refuses_context_prediction_and_bad_inner_params(data_dir):
    with pytest.raises(ConfigError, match="copying"):
        TextInPrompt("context_prediction", {"texts": ["a b c"]})
    with pytest.raises(ConfigError):
        TextInPrompt("classification", {"data_dir": str(data_dir / "classification"), "no_such_param": 1})


def test_with_text_keeps_the_example_and_changes_only_the_question(embedded_tokenizer):
    from activation_oracles.training.example import TrainingExample

    ex = TrainingExample(tuple(embedded_tokenizer("The sky is green.")["input_ids"]), (2, 3), 25.0, "True?", "No", "s",
                         {"task": "t"})
    out = with_text(ex, embedded_tokenizer)
    assert out.question == 'Text: "The sky is green."\nTrue?'
    assert (out.context_ids, out.positions, out.answer, out.meta["task"]) == (ex.context_ids, ex.positions, "No", "t")
    assert ex.question == "True?"  # the original is not modified


def test_text_baseline_and_ceiling_score_the_cards_examples(embedded_tokenizer, data_dir):
    model = tiny_model(tokenizer=embedded_tokenizer)
    base = text_baseline(model, data_dir=data_dir, n_per_eval=2, evals=["classification_held_out"])
    pooled = base[0]
    assert (pooled["eval"], pooled["method"], pooled["n"]) == ("classification_held_out", "text_base", 14)
    per_task = [r for r in base[1:]]
    assert len(per_task) == 7 and sum(r["n"] for r in per_task) == 14
    assert sum(r["correct"] for r in per_task) == pooled["correct"]
    rows = text_ceiling(ActivationOracle.untrained(model), model, data_dir=data_dir, n_per_eval=1,
                        evals=["classification_held_out"])
    methods = {(r["eval"], r["method"]) for r in rows}
    assert ("classification_held_out", "text_in_prompt") in methods
    assert ("classification_held_out", "text_in_prompt_coeff0") in methods
    assert all(r["n"] == 7 for r in rows if r["eval"] == "classification_held_out")


def test_family_text_baseline_scores_every_kind(embedded_tokenizer, data_dir):
    from activation_oracles.training.families import FAMILIES, QuestionFamilies

    model = tiny_model(tokenizer=embedded_tokenizer)
    fams = ("sentiment", "tense", "mention")  # mention: 249 names, so the open choice is capped
    rows = family_text_baseline(model, data_dir=data_dir, families=list(fams), n_per_kind=4)
    assert [r["eval"] for r in rows] == [f"family/{f}/{k}" for f in fams
                                         for k in ("yes_no", "negated", "open")]
    assert all(r["n"] == 4 and r["method"] == "text_base" for r in rows)
    n_classes = {f: len({FAMILIES[f].answer_of(c) for c in QuestionFamilies(data_dir, families=[f], split="test")
                         .rows[f]}) for f in fams}
    assert n_classes["mention"] > MAX_OPEN_OPTIONS
    for r in rows:
        family, kind = r["eval"].split("/")[1:]
        assert r["chance"] == (1 / min(n_classes[family], MAX_OPEN_OPTIONS) if kind == "open" else 0.5)
    # the AUROC needs both answers among the rows; where it is given, it is a probability
    assert all(0.0 <= r["auroc"] <= 1.0 for r in rows if "auroc" in r)
    assert not any("auroc" in r for r in rows if r["eval"].endswith("/open"))
    with pytest.raises(ValueError, match="n_per_kind=0"):
        family_text_baseline(model, data_dir=data_dir, families=["sentiment"], n_per_kind=0)
