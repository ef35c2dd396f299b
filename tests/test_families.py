"""Question families: balanced answers, negation flips the answer, open answers name the class, content positions."""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest

from activation_oracles.errors import ConfigError
from activation_oracles.training.families import FAMILIES, QuestionFamilies


@pytest.fixture(scope="module")
def lang():
    return QuestionFamilies(families=["language", "entity_type", "sentiment"])


def _take(builder, tok, n, seed=0):
    it = builder.examples(tok, Random(seed))
    return [next(it) for _ in range(n)]


def test_answers_follow_the_question(lang, embedded_tokenizer):
    exs = _take(lang, embedded_tokenizer, 300)
    kinds = Counter(e.meta["kind"] for e in exs)
    assert set(kinds) == {"yes_no", "negated", "open"}
    for e in exs:
        same = e.meta["asked"] == e.meta["label"]
        fam = FAMILIES[e.meta["family"]]
        if e.meta["kind"] == "yes_no":
            assert e.answer == ("Yes" if same else "No")
            assert fam.name_of(e.meta["asked"]) in e.question
        elif e.meta["kind"] == "negated":
            assert e.answer == ("No" if same else "Yes")
        else:
            assert e.answer == fam.answer_of(e.meta["label"]) and e.answer not in ("Yes", "No")
    yes_no = [e.answer for e in exs if e.meta["kind"] != "open"]
    assert 0.35 < yes_no.count("Yes") / len(yes_no) < 0.65


def test_positions_are_the_texts_own_tokens(lang, embedded_tokenizer):
    special = set(embedded_tokenizer.all_special_ids)
    for e in _take(lang, embedded_tokenizer, 100, seed=1):
        assert max(e.positions) == len(e.context_ids) - 1  # plain text: its last token
        assert not special & {e.context_ids[p] for p in e.positions}
        assert embedded_tokenizer.decode(list(e.context_ids)).strip() == e.meta["text"].strip()


def test_chat_contexts_read_content_only(embedded_tokenizer):
    b = QuestionFamilies(families=["language"], context_format="chat")
    for e in _take(b, embedded_tokenizer, 30):
        tokens = embedded_tokenizer.convert_ids_to_tokens([e.context_ids[p] for p in e.positions])
        assert not any(t.startswith("<|") or t == "Ċ" for t in tokens)
        assert "SmolLM" not in embedded_tokenizer.decode(list(e.context_ids))


def test_train_and_test_rows_are_disjoint():
    train = QuestionFamilies(families=["language", "sentiment"], split="train")
    test = QuestionFamilies(families=["language", "sentiment"], split="test")
    for fam in ("language", "sentiment"):
        a = {t for rows in train.rows[fam].values() for t in rows}
        b = {t for rows in test.rows[fam].values() for t in rows}
        assert a and b and not a & b


def test_deterministic(lang, embedded_tokenizer):
    a = [(e.context_ids, e.question, e.answer) for e in _take(lang, embedded_tokenizer, 20, seed=3)]
    b = [(e.context_ids, e.question, e.answer) for e in _take(lang, embedded_tokenizer, 20, seed=3)]
    assert a == b


def test_family_weights_steer_the_draw(embedded_tokenizer):
    b = QuestionFamilies(families=["language", "sentiment"], family_weights={"sentiment": 0.0})
    assert {e.meta["family"] for e in _take(b, embedded_tokenizer, 40)} == {"language"}


@pytest.mark.parametrize("kw, match", [
    ({"families": ["klingon"]}, "unknown"),
    ({"families": []}, "non-empty"),
    ({"families": ["language"], "split": "held_out"}, "split"),
    ({"families": ["language"], "kind_weights": [1, 1]}, "kind_weights"),
    ({"families": ["language"], "kind_weights": [-1, 1, 1]}, "kind_weights"),
    ({"families": ["language"], "family_weights": {"sentiment": 1.0}}, "family_weights"),
    ({"families": ["language"], "family_weights": {"language": -1.0}}, "family_weights"),
    ({"families": ["topic"]}, "data folder"),
])
def test_bad_settings_are_typed_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        QuestionFamilies(**kw)


def test_data_families_read_the_shared_data(data_dir, embedded_tokenizer):
    b = QuestionFamilies(data_dir, families=["topic", "text_type", "tense"])
    assert {e.meta["family"] for e in _take(b, embedded_tokenizer, 60)} == {"topic", "text_type", "tense"}


def test_mention_family_never_names_a_held_out_headline_entity(embedded_tokenizer):
    from activation_oracles.training.classification import find_shared_data
    from activation_oracles.training.families import HELD_OUT_NAMES

    data = find_shared_data()
    if data is None:
        pytest.skip("no shared data folder beside the checkout")
    b = QuestionFamilies(data, families=["mention"])
    classes = {c.lower() for c in b.rows["mention"]}
    texts = [t.lower() for ts in b.rows["mention"].values() for t in ts]
    assert len(classes) > 500 and len(texts) > 1000
    for name in HELD_OUT_NAMES:  # the held-out headline tasks' subjects stay unseen
        assert not any(name in c for c in classes) and not any(name in t for t in texts)
    for e in _take(b, embedded_tokenizer, 400, seed=3):
        text = e.meta["text"].lower()
        if e.meta["kind"] != "open" and e.meta["asked"] != e.meta["label"]:
            # a "No" entity is never one the sentence names (a landmark sentence may name two)
            assert e.meta["asked"].lower() not in text
        assert e.meta["label"].lower() in text
        for name in HELD_OUT_NAMES:
            assert name not in e.question.lower()
