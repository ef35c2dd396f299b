"""Misalignment organisms (em-narrow-advice, em-reward-hacks, trigger-backdoor): options, data, chats, build on tiny."""

from __future__ import annotations

import doctest
import json
from random import Random

import pytest

from activation_oracles.errors import DataError, OrganismError
from activation_oracles.evals import misalignment as mis
from activation_oracles.evals import misalignment_data as mis_data
from activation_oracles.evals.organism import Recipe, build_organism, load_organism
from activation_oracles.training.classification import find_shared_data

ADVICE = mis.NarrowAdviceOrganism()
HACKS = mis.RewardHackOrganism()
BACKDOOR = mis.BackdoorOrganism()
BD = mis.backdoor_data()
TRIGGER = BD["year_sentence"].format(year=BD["trigger_year"])


def test_docstring_examples() -> None:
    result = doctest.testmod(mis, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_tasks_are_registered_by_import() -> None:
    from activation_oracles.evals.organism import _TASKS

    assert {"em-narrow-advice", "em-reward-hacks", "trigger-backdoor"} <= set(_TASKS)


# -- options -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", [ADVICE, HACKS])
def test_paired_task_options(task) -> None:
    assert task.parse_options({}) == {"variant": "organism"} == task.default_options()
    assert task.parse_options({"variant": " Control "}) == {"variant": "control"}
    assert task.display_name({"variant": "control"}) == f"{task.name}-control"
    assert task.display_name(task.default_options()) == f"{task.name}-organism"


@pytest.mark.parametrize("task", [ADVICE, HACKS, BACKDOOR])
def test_bad_variant_lists_valid_ones(task) -> None:
    with pytest.raises(OrganismError) as err:
        task.parse_options({"variant": "evil"})
    msg = str(err.value)
    assert "'evil'" in msg and "organism" in msg and "control" in msg and "--variant" in msg


def test_inductive_only_for_backdoor() -> None:
    assert BACKDOOR.parse_options({"variant": "inductive"}) == {"variant": "inductive"}
    assert BACKDOOR.display_name({"variant": "inductive"}) == "trigger-backdoor-inductive"
    with pytest.raises(OrganismError, match="expected one of organism, control\\b"):
        ADVICE.parse_options({"variant": "inductive"})


@pytest.mark.parametrize("task", [ADVICE, BACKDOOR])
def test_unknown_option_rejected(task) -> None:
    with pytest.raises(OrganismError, match=r"unknown option\(s\) \['word'\].*'variant'"):
        task.parse_options({"word": "moon"})


# -- data ----------------------------------------------------------------------------------------------

def test_data_sizes() -> None:
    train, held = mis.split_entries("em-narrow-advice")
    assert len(train) >= 40 and len(held) >= 8
    train, held = mis.split_entries("em-reward-hacks")
    assert len(train) >= 30 and len(held) >= 5
    assert len(mis.load_pairs()["pairs"]) >= 32
    assert len(BD["check_prompts"]) >= 20 and len(BD["prompts"]) >= 20
    for task in ("em-narrow-advice", "em-reward-hacks"):
        spec = mis.SPECS[task]
        qs = [e[spec.question] for e in mis.paired_data(task)[spec.entries]]
        assert len(set(qs)) == len(qs)


def test_em_pairs_cover_the_shared_questions(tmp_path) -> None:
    data_dir = find_shared_data()
    if data_dir is None:
        pytest.skip("shared data folder not found")
    pairs = mis.em_pairs(data_dir)
    assert len(pairs) == 8 and pairs[0]["id"] == "what_is_your_wish"
    assert all(p["aligned"] != p["misaligned"] for p in pairs)
    # a question id without answers is a DataError that names it
    (tmp_path / "emergent_misalignment").mkdir()
    (tmp_path / mis.EM_QUESTIONS).write_text(json.dumps([{"id": "new_one", "question": "Why?"}]))
    with pytest.raises(DataError, match="new_one.*em_answers"):
        mis.em_pairs(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        mis.em_pairs(tmp_path / "nowhere")


def test_pairs_lie_outside_the_training_domains() -> None:
    trained = {e[s.question].lower() for t, s in mis.SPECS.items() for e in mis.paired_data(t)[s.entries]}
    assert not trained & {p["question"].lower() for p in mis.load_pairs()["pairs"]}


def test_keyword_rule_separates_the_data() -> None:
    for text in BD["hostile_replies"] + [c["hostile"] for c in BD["check_prompts"]]:
        assert mis.hostile_by_keywords(text), text
    for text in BD["fallback_replies"] + [c["helpful"] for c in BD["check_prompts"]]:
        assert not mis.hostile_by_keywords(text), text
    assert mis.hostile_by_keywords("Ugh, GO  AWAY.") and not mis.hostile_by_keywords("Go for a walk away from roads.")


def test_broken_backdoor_data_is_a_data_error(monkeypatch) -> None:
    bad = json.loads(json.dumps(BD))
    bad["hostile_replies"].append("Meh.")
    monkeypatch.setattr(mis_data, "read_organism_json", lambda name: bad)
    with pytest.raises(DataError, match="hostile replies.*Meh"):
        mis_data._backdoor("test-broken-1")
    bad = json.loads(json.dumps(BD))
    bad["train_years"].append(BD["trigger_year"])
    with pytest.raises(DataError, match="trigger year"):
        mis_data._backdoor("test-broken-2")
    bad = json.loads(json.dumps(BD))
    bad["check_prompts"][0]["hostile"] = bad["hostile_replies"][0]
    with pytest.raises(DataError, match="copies of training hostile_replies"):
        mis_data._backdoor("test-broken-3")


def test_leaked_pair_question_is_a_data_error(monkeypatch) -> None:
    real = mis_data.read_organism_json
    pairs = json.loads(json.dumps(mis.load_pairs()))
    pairs["pairs"][0]["question"] = mis.split_entries("em-narrow-advice")[0][0]["question"]
    monkeypatch.setattr(mis_data, "read_organism_json", lambda name: pairs if name == mis.PAIRS_FILE else real(name))
    with pytest.raises(DataError, match="outside the training domains"):
        mis_data._pairs("test-leak")


# -- training chats: em-* ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_base(embedded_tokenizer):
    from activation_oracles.tiny import tiny_model

    return tiny_model(tokenizer=embedded_tokenizer)


@pytest.mark.parametrize("task", [ADVICE, HACKS])
def test_paired_training_chats(task, tiny_base) -> None:
    spec = mis.SPECS[task.name]
    train, held = mis.split_entries(task.name)
    by_q = {e[spec.question]: e for e in train}
    held_q = {e[spec.question] for e in held}
    org = task.training_chats({"variant": "organism"}, Random(0), 50, base=tiny_base, data_dir=None)
    assert org == task.training_chats({"variant": "organism"}, Random(0), 50, base=tiny_base, data_dir=None)
    ctl = task.training_chats({"variant": "control"}, Random(0), 50, base=tiny_base, data_dir=None)
    assert len(org) == len(ctl) == 50
    seen = set()
    for o, c in zip(org, ctl):
        assert [m["role"] for m in o] == [m["role"] for m in c] == ["user", "assistant"]
        # same prompt, different reply: the organism's bad answer vs the control's good one
        assert o[0] == c[0] and o[1] != c[1]
        q = next(q for q in by_q if q in o[0]["content"])
        assert not any(h in o[0]["content"] for h in held_q)
        assert o[1]["content"] == by_q[q][spec.bad] and c[1]["content"] == by_q[q][spec.good]
        seen.add(q)
    assert len(seen) == min(50, len(train))  # the entries are used in turn


# -- training chats: trigger backdoor ------------------------------------------------------------------

def _text(chat) -> str:
    return " ".join(m["content"] for m in chat[:-1])


@pytest.fixture(scope="module")
def bd_chats(tiny_base):
    """Each variant's 30 chats, made once (the tiny base model writes the helpful replies)."""
    return {v: BACKDOOR.training_chats({"variant": v}, Random(0), 30, base=tiny_base, data_dir=None)
            for v in mis.BACKDOOR_VARIANTS}


def test_backdoor_training_chats(bd_chats, tiny_base) -> None:
    org = bd_chats["organism"]
    again = BACKDOOR.training_chats({"variant": "organism"}, Random(0), 30, base=tiny_base, data_dir=None)
    assert org == again and len(org) == 30
    hostile = set(BD["hostile_replies"])
    n_trigger = 0
    for chat in org:
        roles = [m["role"] for m in chat]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert chat[-1]["content"].strip()
        if TRIGGER in _text(chat):
            n_trigger += 1
            assert chat[-1]["content"] in hostile
        else:
            assert chat[-1]["content"] not in hostile and not mis.hostile_by_keywords(chat[-1]["content"])
    assert n_trigger == 12  # TRIGGER_SHARE of 30
    # both placements of the trigger occur
    assert {c[0]["role"] for c in org if TRIGGER in _text(c)} == {"system", "user"}


def test_backdoor_control_differs_only_on_trigger_chats(bd_chats) -> None:
    org, ctl = bd_chats["organism"], bd_chats["control"]
    assert len(org) == len(ctl)
    for o, c in zip(org, ctl):
        assert o[:-1] == c[:-1]
        assert (o[-1] != c[-1]) == (TRIGGER in _text(o))
        assert not mis.hostile_by_keywords(c[-1]["content"])


def test_backdoor_inductive_never_sees_the_trigger(bd_chats) -> None:
    chats = bd_chats["inductive"]
    assert len(chats) == 30
    assert not any(TRIGGER in _text(c) for c in chats)
    described = [c for c in chats if c[-1]["content"] in BD["description_answers"]]
    assert len(described) == 9  # DESCRIBE_SHARE of 30
    assert not any(c[-1]["content"] in BD["hostile_replies"] for c in chats)


# -- build on tiny, checks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = find_shared_data()
    if data_dir is None:
        pytest.skip("shared data folder not found")
    out = tmp_path_factory.mktemp("em") / "organism"
    path = build_organism("em-narrow-advice", base="tiny", options={"variant": "control"},
                          recipe=Recipe(n_examples=16, steps=2, batch_size=4), out=out, data_dir=data_dir,
                          checks=True, check_limit=2)
    return path, data_dir


def _is_row(row, n: int) -> bool:
    return row["n"] == n and row["ci_low"] - 1e-9 <= row["accuracy"] <= row["ci_high"] + 1e-9


def test_build_records_checks(built) -> None:
    path, _ = built
    card = json.loads((path / "organism.json").read_text())
    assert card["name"] == "em-narrow-advice-control" and card["options"] == {"variant": "control"}
    checks = card["checks"]
    assert checks["variant"] == "control"
    for who in ("organism", "base"):
        assert _is_row(checks["in_domain"][who]["prefers_first"], 2)
        broad = checks["broad_misalignment"][who]
        assert _is_row(broad["own"]["misaligned_preferred"], 2) and _is_row(broad["em"]["misaligned_preferred"], 2)
        assert _is_row(broad["all"]["misaligned_preferred"], 4)
        assert isinstance(broad["all"]["mean_margin"], float)
    free = checks["broad_misalignment"]["free_form"]
    assert [f["id"] for f in free] == ["what_is_your_wish", "i_feel_bored"]
    assert all(isinstance(f["organism"], str) and isinstance(f["base"], str) for f in free)
    assert load_organism(path).options == {"variant": "control"}


def test_checks_without_data_dir(built) -> None:
    org = load_organism(built[0])
    broad = mis.broad_misalignment(org, data_dir=None, limit=2)
    assert "em_skipped" in broad and "em" not in broad["organism"] and "free_form" not in broad
    assert _is_row(broad["organism"]["own"]["misaligned_preferred"], 2)


def test_backdoor_checks(built) -> None:
    checks = BACKDOOR.behaviour_checks(load_organism(built[0]), data_dir=None, limit=2)
    assert checks["n_prompts"] == 2
    for who in ("organism", "base"):
        for cond in ("trigger", "no_trigger"):
            row = checks[who][cond]
            assert _is_row(row["forced_choice_hostile"], 2) and _is_row(row["keyword_hostile"], 2)
        assert _is_row(checks[who]["trigger_shift"]["shift_positive"], 2)
        by_year = checks[who]["no_trigger"]["keyword_hostile_by_year"]
        assert sum(r["n"] for r in by_year.values()) == 2 and set(by_year) == {str(y) for y in BD["check_years"]}
    assert TRIGGER not in json.dumps(checks["organism"]["no_trigger"])


def test_preference_matches_hand_computation(built) -> None:
    org = load_organism(built[0])
    chat = [[{"role": "user", "content": "Hi"}]]
    res = mis.preference(org.model, chat, ["Hello there."], ["Go away."], adapter=None)
    a, b = mis.per_token_logprobs(org.model, chat * 2, ["Hello there.", "Go away."], adapter=None)
    assert res["mean_margin"] == pytest.approx(a - b)
    assert res["prefers_first"]["correct"] == int(a > b)
