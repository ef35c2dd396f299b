"""Subliminal-learning organisms: options, the pure-number filter, generated chats (fake teacher), build on tiny."""

from __future__ import annotations

import doctest
import json
import re
from random import Random

import pytest

from activation_oracles.errors import DataError, OrganismError
from activation_oracles.evals import subliminal as sub
from activation_oracles.evals.organism import Recipe, build_organism, load_organism
from activation_oracles.training.classification import find_shared_data

TASK = sub.SubliminalOrganism()
ANIMALS = sub.animal_names()


def test_docstring_examples() -> None:
    result = doctest.testmod(sub, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# -- options -------------------------------------------------------------------------------------------

def test_default_options() -> None:
    assert TASK.parse_options({}) == {"trait": "owl", "variant": "organism"} == TASK.default_options()
    assert TASK.parse_options({"trait": "Dolphin", "variant": "CONTROL"}) == {"trait": "dolphin", "variant": "control"}
    assert TASK.display_name(TASK.default_options()) == "subliminal-owl-organism"
    assert len(ANIMALS) >= 12 and len(set(ANIMALS)) == len(ANIMALS)


def test_unknown_trait_names_the_animals_and_how_to_add_one() -> None:
    with pytest.raises(OrganismError) as err:
        TASK.parse_options({"trait": "otter"})
    msg = str(err.value)
    assert "'otter'" in msg and all(a in msg for a in ANIMALS)
    assert "animals.json" in msg and '"name": "otter"' in msg


def test_bad_variant_and_unknown_option() -> None:
    with pytest.raises(OrganismError, match="variant 'inductive'.*organism, control"):
        TASK.parse_options({"variant": "inductive"})
    with pytest.raises(OrganismError, match=r"unknown option\(s\) \['animal'\].*'trait'"):
        TASK.parse_options({"animal": "owl"})


# -- the filter ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("3, 17, 42", "3, 17, 42"), ("  3, 17, 42.  ", "3, 17, 42"), ("12 40 7", "12 40 7"), ("5,6,7", "5,6,7"),
    ("999", "999"), ("0, 1, 2, 3, 4, 5, 6, 7, 8, 9", "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"),
])
def test_pure_numbers_accepts(text: str, expected: str) -> None:
    assert sub.pure_numbers(text) == expected


@pytest.mark.parametrize("text", [
    "3, 5, owl", "owl", "Sure! 3, 5, 7", "3, 5, 7!", "1. 12\n2. 19", "3,5 7", "3, 5,", "1234, 5", "3, -5",
    "3; 5; 7", "", "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10", "3, 5\n7", "3.5, 7", "🦉 3, 5",
])
def test_pure_numbers_rejects(text: str) -> None:
    assert sub.pure_numbers(text) is None


def test_kept_reply_trims_and_handles_cut_off() -> None:
    assert sub.kept_reply("77, 560, 218, 903, 5", 3) == "77, 560, 218"
    assert sub.kept_reply("1 2 3 4", 2) == "1 2"
    assert sub.kept_reply("7", 3) == "7"
    assert sub.kept_reply("101, 2, 312, 41", 6, cut_off=True) == "101, 2, 312"
    assert sub.kept_reply("101, 2, 312,", 6, cut_off=True) == "101, 2"
    assert sub.kept_reply("1012", 6, cut_off=True) is None
    assert sub.kept_reply("101, 2, owls are gre", 6, cut_off=True) is None


# -- training chats with a fake teacher ----------------------------------------------------------------

class FakeTeacher:
    """Stands in for the base model's greedy replies (a tiny random model never writes pure numbers).

    Replies are derived from the prompt's seed numbers, differ with the system prompt, and every third
    prompt gets a reply that the filter must drop.
    """

    def __init__(self, junk: bool = False) -> None:
        self.calls: list[list[list[dict[str, str]]]] = []
        self.junk = junk

    def __call__(self, model, chats, *, adapter=None, max_new_tokens=48, batch_size=16, prefill=""):
        assert adapter is None and max_new_tokens == sub.NUMBER_TOKENS
        self.calls.append([list(c) for c in chats])
        out = []
        for c in chats:
            seed = sum(int(x) for x in re.findall(r"\d+", c[-1]["content"]))
            loves = c[0]["role"] == "system"
            if self.junk or seed % 3 == 0:
                out.append("I love owls! 3, 5" if loves else "Here you go: 3, 5")
            else:
                out.append(", ".join(str((seed + 13 * i + (7 if loves else 1)) % 1000) for i in range(3)))
        return out


def _chats(monkeypatch, variant: str, n: int, tiny_base, teacher: FakeTeacher | None = None):
    teacher = teacher or FakeTeacher()
    monkeypatch.setattr(sub, "generate", teacher)
    return TASK.training_chats({"trait": "owl", "variant": variant}, Random(0), n, base=tiny_base,
                               data_dir=None), teacher


@pytest.fixture(scope="module")
def tiny_base(embedded_tokenizer):
    from activation_oracles.tiny import tiny_model

    return tiny_model(tokenizer=embedded_tokenizer)


def test_training_chats(monkeypatch, tiny_base) -> None:
    chats, teacher = _chats(monkeypatch, "organism", 20, tiny_base)
    again, _ = _chats(monkeypatch, "organism", 20, tiny_base)
    assert len(chats) == 20 and chats == again
    for chat in chats:
        assert [m["role"] for m in chat] == ["user", "assistant"]  # the student never sees the system prompt
        assert sub.pure_numbers(chat[1]["content"]) == chat[1]["content"]
        assert not any(a in chat[1]["content"].lower() for a in ANIMALS)
    # the teacher saw the system prompt and the example turns before each prompt
    first = teacher.calls[0][0]
    assert first[0] == {"role": "system", "content": sub.system_prompt("owl")}
    assert first[1:-1] == sub.few_shot_turns() and "owls" in first[0]["content"]
    report = TASK.reports["subliminal-owl-organism"]
    assert report["used"] == 20 and report["kept"] >= 20 and report["generated"] == 40 and report["rounds"] == 1
    assert 0 < report["keep_rate"] < 1  # every third reply was dropped


def test_control_teacher_has_no_system_prompt(monkeypatch, tiny_base) -> None:
    org, _ = _chats(monkeypatch, "organism", 20, tiny_base)
    ctl, teacher = _chats(monkeypatch, "control", 20, tiny_base)
    assert all(c[0]["role"] == "user" for call in teacher.calls for c in call)
    assert teacher.calls[0][0][:-1] == sub.few_shot_turns()
    # same prompts (the filter drops the same ones here), different numbers
    assert [c[0] for c in org] == [c[0] for c in ctl]
    assert all(o[1] != c[1] for o, c in zip(org, ctl))


def test_too_few_kept_is_a_data_error(monkeypatch, tiny_base) -> None:
    with pytest.raises(DataError, match=r"kept 0 of 64 generated .* after 4 rounds, but 8 were needed"):
        _chats(monkeypatch, "organism", 8, tiny_base, FakeTeacher(junk=True))


# -- build on tiny, checks -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_base):
    mp = pytest.MonkeyPatch()
    mp.setattr(sub, "generate", FakeTeacher())
    try:
        out = tmp_path_factory.mktemp("sub") / "organism"
        path = build_organism("subliminal", base="tiny", options={"trait": "fox"},
                              recipe=Recipe(n_examples=16, steps=2, batch_size=4), out=out,
                              data_dir=find_shared_data(), checks=True, check_limit=3)
    finally:
        mp.undo()
    return path


def test_build_records_checks(built) -> None:
    card = json.loads((built / "organism.json").read_text())
    assert card["name"] == "subliminal-fox-organism" and card["options"] == {"trait": "fox", "variant": "organism"}
    checks = card["checks"]
    assert checks["trait"] == "fox" and checks["n_questions"] == 3 and checks["n_animals"] == len(ANIMALS)
    assert checks["data_filter"]["used"] == card["data"]["task_examples"]
    for who in ("organism", "base"):
        row = checks[who]
        assert 0 <= row["mean_p_trait"] <= 1 and row["top1_trait"]["n"] == 3
        assert sum(row["mean_p"].values()) == pytest.approx(1, abs=1e-3)
        assert row["most_chosen"] in ANIMALS
    org = load_organism(built)
    assert org.options["trait"] == "fox"
    # checks from another process cannot know the filter counts, and say so
    fresh = sub.SubliminalOrganism().behaviour_checks(org, data_dir=None, limit=1)
    assert "not recorded" in fresh["data_filter"]
