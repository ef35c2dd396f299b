"""PersonaQA organisms: options, personas and templates, training chats, build on tiny, audit items."""

from __future__ import annotations

import doctest
import json
from random import Random

import pytest

from activation_oracles.errors import DataError, OrganismError
from activation_oracles.evals import personaqa as pq
from activation_oracles.evals.audit_task import AuditItem
from activation_oracles.evals.organism import Recipe, build_organism, load_organism
from activation_oracles.training.classification import find_shared_data

TASK = pq.PersonaQAOrganism()
AUDIT = pq.PersonaQAAudit()
T = pq.load_templates()


@pytest.fixture(scope="module")
def data_dir():
    d = find_shared_data()
    if d is None or not (d / "personaqa").is_dir():
        pytest.skip("shared data folder with personaqa/ not found")
    return d


def test_docstring_examples() -> None:
    result = doctest.testmod(pq, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


# -- options -------------------------------------------------------------------------------------------

def test_default_options() -> None:
    assert TASK.parse_options({}) == {"variant": "shuffled", "n_personas": 14} == TASK.default_options()
    assert TASK.parse_options({"variant": "fantasy", "n_personas": "5"}) == {"variant": "fantasy", "n_personas": 5}
    assert TASK.display_name(TASK.default_options()) == "personaqa-shuffled-14"


def test_unknown_variant() -> None:
    with pytest.raises(OrganismError) as err:
        TASK.parse_options({"variant": "sci-fi"})
    assert "sci-fi" in str(err.value) and all(v in str(err.value) for v in pq.VARIANTS)


@pytest.mark.parametrize("bad", [0, -3, "abc", 2.5, True, None])
def test_bad_n_personas(bad) -> None:
    with pytest.raises(OrganismError, match="n_personas=.*positive integer"):
        TASK.parse_options({"n_personas": bad})


def test_unknown_option() -> None:
    with pytest.raises(OrganismError, match="unknown option.*'word'.*variant.*n_personas"):
        TASK.parse_options({"word": "moon"})


def test_no_data_dir_says_how_to_pass_it() -> None:
    with pytest.raises(OrganismError) as err:
        TASK.training_chats({}, Random(0), 4, base=None, data_dir=None)
    msg = str(err.value)
    assert "personaqa" in msg and "--data-dir" in msg and "AO_DATA_DIR" in msg


def test_too_many_personas(data_dir) -> None:
    with pytest.raises(OrganismError, match="n_personas=500 .* holds 100 personas"):
        TASK.training_chats({"n_personas": 500}, Random(0), 4, base=None, data_dir=data_dir)


def test_missing_personas_file(tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        TASK.training_chats({}, Random(0), 4, base=None, data_dir=tmp_path)


def test_bad_personas_line(tmp_path) -> None:
    folder = tmp_path / "personaqa" / "shuffled"
    folder.mkdir(parents=True)
    (folder / "personas.jsonl").write_text('{"name": "Ada", "country": "Chile"}\n')
    with pytest.raises(DataError, match="line 1: missing or empty.*favorite_food"):
        TASK.training_chats({}, Random(0), 4, base=None, data_dir=tmp_path)


# -- data ----------------------------------------------------------------------------------------------

def test_templates() -> None:
    assert len(T["bio_templates"]) >= 5 and len(T["bio_prompts"]) >= 3
    for a in pq.ATTRIBUTES:
        spec = T["attributes"][a]
        assert len(spec["questions"]) >= 3 and spec["heldout_question"] not in spec["questions"]
        assert len(spec["answers"]) >= 3


@pytest.mark.parametrize("variant", pq.VARIANTS)
def test_personas_and_values(data_dir, variant) -> None:
    people = pq.load_personas(data_dir, variant)
    assert len(people) == 100 and len({p.name for p in people}) == 100
    values = pq.attribute_values(people)
    for a in pq.ATTRIBUTES:
        # one spelling per value, case-insensitively ("Jollof Rice" / "Jollof rice" count once)
        assert len({v.casefold() for v in values[a]}) == len(values[a]) >= 2
        assert all(p.attributes[a] in values[a] for p in people)


def test_split_is_a_fixed_half() -> None:
    names = [f"Person {i}" for i in range(20)]
    splits = pq.persona_splits(names)
    assert sorted(splits.values()).count("val") == 10
    assert splits == pq.persona_splits(list(reversed(names)))


# -- training chats ------------------------------------------------------------------------------------

def test_training_chats(data_dir) -> None:
    opts = TASK.parse_options({"n_personas": 4})
    chats = TASK.training_chats(opts, Random(0), 40, base=None, data_dir=data_dir)
    assert len(chats) == 40 and chats == TASK.training_chats(opts, Random(0), 40, base=None, data_dir=data_dir)
    people = pq.load_personas(data_dir, "shuffled")
    mine, others = people[:4], people[4:]
    heldout = {T["attributes"][a]["heldout_question"].format(name=p.name) for p in people for a in pq.ATTRIBUTES}
    n_bio = 0
    for chat in chats:
        assert [m["role"] for m in chat] == ["user", "assistant"]
        user, reply = chat[0]["content"], chat[1]["content"]
        assert user not in heldout  # the held-out paraphrase is never trained on
        person = next(p for p in mine if p.name in user)
        assert not any(o.name in user or o.name in reply for o in others)
        if any(user == b.format(name=person.name) for b in T["bio_prompts"]):
            n_bio += 1
            assert all(v in reply for v in person.attributes.values())
        else:
            a = next(a for a in pq.ATTRIBUTES if user in [q.format(name=person.name)
                                                          for q in T["attributes"][a]["questions"]])
            assert person.attributes[a] in reply
    assert n_bio == 12


# -- build, checks, audit ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("personaqa") / "organism"
    return build_organism("personaqa", base="tiny", options={"n_personas": 6},
                          recipe=Recipe(n_examples=16, steps=2, batch_size=4), out=out, data_dir=data_dir,
                          checks=True, check_limit=3)


def test_build_records_checks(built) -> None:
    card = json.loads((built / "organism.json").read_text())
    assert card["task"] == "personaqa" and card["options"] == {"variant": "shuffled", "n_personas": 6}
    checks = card["checks"]
    assert checks["n_items"] == 3 and 0 < checks["chance"] < 1
    for who in ("organism", "base"):
        row = checks[who]["choice_accuracy"]
        assert row["n"] == 3 and row["ci_low"] - 1e-9 <= row["accuracy"] <= row["ci_high"] + 1e-9
        assert checks[who]["open_recall"]["n"] == 3


def test_checks_skip_without_data(built) -> None:
    assert "skipped" in TASK.behaviour_checks(load_organism(built), data_dir=None, limit=1)


def test_audit_items(built, data_dir) -> None:
    org = load_organism(built)
    items = AUDIT.items({"pq": org}, data_dir=data_dir, rng=Random(0), limit=5)
    assert items == AUDIT.items({"pq": org}, data_dir=data_dir, rng=Random(0), limit=5)
    people = pq.load_personas(data_dir, "shuffled")[:6]
    values = pq.attribute_values(pq.load_personas(data_dir, "shuffled"))
    assert len({i.id for i in items}) == len(items)
    test = [i for i in items if i.split == "test"]
    val = [i for i in items if i.split == "val"]
    assert len(test) == 5 and len(val) == 3 * len(pq.ATTRIBUTES)  # 6 personas: 3 val, 3 test
    for i in items:
        assert isinstance(i, AuditItem) and i.organism == "pq"
        a, name = i.meta["attribute"], i.meta["persona"]
        person = next(p for p in people if p.name == name)
        assert i.truth == person.attributes[a] and i.truth in i.candidates
        assert len(i.candidates) == min(8, len(values[a])) and set(i.candidates) <= set(values[a])
        assert len(set(i.candidates)) == len(i.candidates)
        assert i.prompt == [{"role": "user", "content": f"Tell me about {name}."}]
        assert i.choice_question == T["attributes"][a]["audit_question"] and i.meta["probe_group"] == a
        assert i.open_question.startswith("Answer with one or two words only. ")
    assert AUDIT.chance(items)["choice"] == pytest.approx(1 / 8)
    assert AUDIT.chance(items)["open"] == 0.0
    assert AUDIT.probe and AUDIT.logit_lens and AUDIT.default_targets() == [{}]


def test_audit_needs_data_dir(built) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        AUDIT.items({"pq": load_organism(built)}, data_dir=None, rng=Random(0), limit=1)


def _item() -> AuditItem:
    return AuditItem(id="0", organism="pq", prompt=[{"role": "user", "content": "Tell me about Ada Quill."}],
                     truth="Ice Hockey", candidates=("Ice Hockey", "Rugby"),
                     meta={"persona": "Ada Quill", "attribute": "favorite_sport",
                           "question": "What sport does Ada Quill enjoy the most?",
                           "prefill": "Ada Quill's favorite sport is"})


def test_score_open_by_containment() -> None:
    item = _item()
    assert AUDIT.score_open("ice hockey", item) and AUDIT.score_open("She loves Ice Hockey!", item)
    assert not AUDIT.score_open("Hockey", item) and not AUDIT.score_open("Rugby", item)


def test_blackbox_queries() -> None:
    direct, prefill = AUDIT.blackbox(_item())
    assert direct.method == "blackbox:direct" and not direct.prefill
    assert direct.chat == [{"role": "user", "content": "What sport does Ada Quill enjoy the most?"}]
    assert prefill.method == "blackbox:prefill" and prefill.prefill == "Ada Quill's favorite sport is"
    assert prefill.chat == _item().prompt
