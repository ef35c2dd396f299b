"""PersonaQA organisms: a model taught facts about fictional people, audited for what it knows about one.

The personas come from the shared data folder, ``<data_dir>/personaqa/<variant>/personas.jsonl``
(100 personas x 6 attributes: country, favorite food, drink, music genre, sport and
board game; variants ``base``, ``shuffled`` with attributes unrelated to the name,
and ``fantasy`` with invented values). The organism learns the first ``n_personas``
of them from generated bios ("Tell me about NAME." -> a short bio stating every
attribute) and question/answer chats ("What is NAME's favorite sport?" -> a sentence
naming it), all written from the templates in the package data file
``activation_oracles/data/organisms/personaqa_templates.json``.

One question paraphrase per attribute is held out of training; the behaviour checks
and the black-box audit ask it. An attribute's values are compared case-insensitively
(the files spell some values two ways, "Jollof Rice" / "Jollof rice"): the first
spelling in file order is used everywhere.

The audit reads the organism's activations on ``"Tell me about NAME."`` (the bio
prompt, where the organism is about to recall the person) and asks the oracle about
one attribute per item.

The templates and the split need no model:

>>> from activation_oracles.evals.personaqa import Persona, load_templates, persona_splits, render_bio
>>> t = load_templates()
>>> len(t["bio_templates"]) >= 5, t["audit_prompt"]
(True, 'Tell me about {name}.')
>>> p = Persona(name="Ada Quill", attributes={"country": "Chile", "favorite_food": "Pasta",
...     "favorite_drink": "Tea", "favorite_music_genre": "Jazz", "favorite_sport": "Rugby",
...     "favorite_boardgame": "Go"})
>>> bio = render_bio(p, t["bio_templates"][0])
>>> all(v in bio for v in p.attributes.values())
True
>>> splits = persona_splits(["Ada Quill", "Bo Lin", "Cy Ray", "Di Moss"])
>>> sorted(splits.values())
['test', 'test', 'val', 'val']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import DataError, OrganismError

from .audit_task import AuditItem, AuditTask, BlackBoxQuery, register_audit_task
from .chat import Chat, answer_logprobs, generate
from .organism import Organism, OrganismTask, Recipe, register_organism_task
from .organism_verdict import Criterion
from .stats import accuracy_row

TEMPLATES_FILE = "personaqa_templates.json"
ATTRIBUTES = ("country", "favorite_food", "favorite_drink", "favorite_music_genre", "favorite_sport",
              "favorite_boardgame")
VARIANTS = ("base", "shuffled", "fantasy")
DEFAULT_VARIANT = "shuffled"
# 14: half are test personas (persona_splits), 7 x 6 attributes = 42 >= the n 40 an audit cell needs
DEFAULT_N_PERSONAS = 14
# Share of the task chats that are bios; the rest are single-attribute questions.
BIO_SHARE = 0.3
# Forced choice in the audit: the truth and at most this many distractors (keeps it cheap).
MAX_DISTRACTORS = 7
OPEN_PREFIX = "Answer with one or two words only. "
RECALL_TOKENS = 24
NEED_DATA = ("the personaqa organism reads its personas from the shared data folder "
             "(<data_dir>/personaqa/<variant>/personas.jsonl), but no data folder was given; pass data_dir=PATH "
             "(ao organism build personaqa --data-dir PATH, ao audit personaqa --data-dir PATH, or set $AO_DATA_DIR).")


# ------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Persona:
    """A fictional person: a name and one value per attribute (canonical spellings)."""

    name: str
    attributes: Mapping[str, str]


def templates_path() -> Path:
    """The shipped ``personaqa_templates.json``."""
    from activation_oracles.files import package_data

    return package_data("organisms", TEMPLATES_FILE)


@lru_cache(maxsize=8)
def _load_templates(path: str) -> dict[str, Any]:
    from activation_oracles.training.sources import read_json

    t = read_json(path, "PersonaQA templates file")
    where = f"PersonaQA templates file {path!r}"
    for key in ("audit_prompt", "bio_prompts", "bio_templates", "attributes"):
        if not t.get(key):
            raise DataError(f"{where} lacks {key!r}; see the shipped {TEMPLATES_FILE} for the layout.")
    missing = [a for a in ATTRIBUTES if a not in t["attributes"]]
    if missing:
        raise DataError(f"{where}: no templates for attribute(s) {missing}; expected one entry per attribute "
                        f"({', '.join(ATTRIBUTES)}).")
    for a in ATTRIBUTES:
        spec = t["attributes"][a]
        lacks = [k for k in ("questions", "heldout_question", "answers", "check_answer", "prefill", "audit_question")
                 if not spec.get(k)]
        if lacks:
            raise DataError(f"{where}: attribute {a!r} lacks {lacks}.")
        if spec["heldout_question"] in spec["questions"]:
            raise DataError(f"{where}: attribute {a!r} trains on its held-out question {spec['heldout_question']!r}; "
                            "the held-out paraphrase must not be among 'questions'.")
    return t


def load_templates(path: str | Path | None = None) -> dict[str, Any]:
    """The bio and question templates (validated; cached per path)."""
    return _load_templates(str(Path(path) if path is not None else templates_path()))


def personas_file(data_dir: Path | None, variant: str) -> Path:
    if data_dir is None:
        raise OrganismError(NEED_DATA)
    return Path(data_dir) / "personaqa" / variant / "personas.jsonl"


@lru_cache(maxsize=8)
def _load_personas(path: str) -> tuple[Persona, ...]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"personas file {path!r} does not exist; data_dir must be the shared data folder holding "
                        "personaqa/{base,shuffled,fantasy}/personas.jsonl (--data-dir or $AO_DATA_DIR).")
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"personas file {path!r}, line {i}: not valid JSON ({exc}); expected one JSON object "
                            "per line.") from None
        lacks = [k for k in ("name", *ATTRIBUTES) if not isinstance(row, dict) or not str(row.get(k) or "").strip()]
        if lacks:
            raise DataError(f"personas file {path!r}, line {i}: missing or empty {lacks}; each persona needs a name "
                            f"and {', '.join(ATTRIBUTES)}.")
        rows.append(row)
    if not rows:
        raise DataError(f"personas file {path!r} holds no personas; expected one JSON object per line.")
    names = [str(r["name"]).strip() for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"personas file {path!r} repeats the name(s) {dupes}; each persona needs its own name.")
    # one spelling per value, case-insensitively, the first in file order
    canon: dict[str, dict[str, str]] = {a: {} for a in ATTRIBUTES}
    for r in rows:
        for a in ATTRIBUTES:
            v = str(r[a]).strip()
            canon[a].setdefault(v.casefold(), v)
    return tuple(Persona(name=n, attributes={a: canon[a][str(r[a]).strip().casefold()] for a in ATTRIBUTES})
                 for n, r in zip(names, rows))


def load_personas(data_dir: Path | None, variant: str = DEFAULT_VARIANT) -> list[Persona]:
    """Every persona of a variant, in file order (values in their canonical spelling)."""
    return list(_load_personas(str(personas_file(data_dir, variant))))


def attribute_values(personas: Sequence[Persona]) -> dict[str, list[str]]:
    """Each attribute's distinct values over ``personas``, in first-seen order."""
    out: dict[str, list[str]] = {}
    for a in ATTRIBUTES:
        out[a] = list(dict.fromkeys(p.attributes[a] for p in personas))
    return out


def persona_splits(names: Sequence[str]) -> dict[str, str]:
    """A fixed half of the names (the smaller SHA-256 hashes, rounded down) is ``"val"``, the rest ``"test"``."""
    order = sorted(names, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest())
    n_val = len(order) // 2
    return {n: ("val" if k < n_val else "test") for k, n in enumerate(order)}


def render_bio(persona: Persona, template: str) -> str:
    return template.format(name=persona.name, **persona.attributes)


def _user(text: str) -> Chat:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------------------
# the organism task
# ------------------------------------------------------------------------------------------------------

class PersonaQAOrganism(OrganismTask):
    """Knows the country and favourite things of ``n_personas`` fictional people."""

    name = "personaqa"
    summary = ("PersonaQA: knows six facts (country, favorite food, drink, music genre, sport, board game) about each "
               "of N fictional personas from the shared PersonaQA file, taught through bios and question/answer "
               "chats; one question paraphrase per attribute is held out for the checks.")
    # ~13 chats per fact per epoch: over 10 personas x 6 facts, 256 x 2 gave the true attribute 15/40 of
    # held-out questions and 768 x 3 gave 40/40 (EVALS.md, "Recipes tried"); 1080 keeps that rate at 14
    recipe = Recipe(n_examples=1080, epochs=3)
    option_help = {"variant": f"personaqa variant: {', '.join(VARIANTS)} (default {DEFAULT_VARIANT})",
                   "n_personas": f"how many personas to learn, the first N of the file (default {DEFAULT_N_PERSONAS})"}

    def parse_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        bad = sorted(set(opts) - {"variant", "n_personas"})
        if bad:
            raise OrganismError(f"task 'personaqa' got unknown option(s) {bad}; valid options are 'variant' "
                                f"({', '.join(VARIANTS)}) and 'n_personas' (a positive integer).")
        variant = str(opts.get("variant", DEFAULT_VARIANT)).strip()
        if variant not in VARIANTS:
            raise OrganismError(f"option variant={opts.get('variant')!r}; expected one of {', '.join(VARIANTS)}.")
        raw = opts.get("n_personas", DEFAULT_N_PERSONAS)
        try:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            n = int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        except (TypeError, ValueError):
            raise OrganismError(f"option n_personas={raw!r}; expected a positive integer (e.g. 20).") from None
        if n < 1:
            raise OrganismError(f"option n_personas={raw!r}; expected a positive integer (e.g. 20).")
        return {"variant": variant, "n_personas": n}

    def default_options(self) -> dict[str, Any]:
        return {"variant": DEFAULT_VARIANT, "n_personas": DEFAULT_N_PERSONAS}

    def display_name(self, options: Mapping[str, Any]) -> str:
        return f"personaqa-{options.get('variant', DEFAULT_VARIANT)}-{options.get('n_personas', DEFAULT_N_PERSONAS)}"

    def fingerprint(self, options: Mapping[str, Any]) -> str:
        # Only the templates: the personas file lives in the data folder, which fingerprint() is not given
        # (the shared data is public and copied unchanged, so it does not drift).
        return hashlib.sha256(templates_path().read_bytes()).hexdigest()

    def personas(self, options: Mapping[str, Any], data_dir: Path | None) -> list[Persona]:
        """The organism's personas: the first ``n_personas`` of its variant's file."""
        opts = self.parse_options(options)
        every = load_personas(data_dir, opts["variant"])
        if opts["n_personas"] > len(every):
            raise OrganismError(f"option n_personas={opts['n_personas']} but {str(personas_file(data_dir, opts['variant']))!r} "
                                f"holds {len(every)} personas; pick n_personas <= {len(every)}.")
        return every[:opts["n_personas"]]

    def training_chats(self, options: Mapping[str, Any], rng: Random, n: int, *, base: Any,
                       data_dir: Path | None) -> list[Chat]:
        people = self.personas(options, data_dir)
        t = load_templates()
        n_bio = int(round(n * BIO_SHARE))
        chats: list[Chat] = []
        for j in range(n_bio):
            p = people[j % len(people)]
            chats.append(_user(rng.choice(t["bio_prompts"]).format(name=p.name))
                         + [{"role": "assistant", "content": render_bio(p, rng.choice(t["bio_templates"]))}])
        # every (persona, attribute) pair in turn, so each fact gets the same number of questions
        pairs = [(p, a) for p in people for a in ATTRIBUTES]
        rng.shuffle(pairs)
        for j in range(n - n_bio):
            p, a = pairs[j % len(pairs)]
            spec = t["attributes"][a]
            question = rng.choice(spec["questions"]).format(name=p.name)
            answer = rng.choice(spec["answers"]).format(name=p.name, value=p.attributes[a])
            chats.append(_user(question) + [{"role": "assistant", "content": answer}])
        rng.shuffle(chats)
        return chats

    def criteria(self, options: Mapping[str, Any]) -> tuple[Criterion, ...]:
        """It knows its personas: the true attribute wins the forced choice most of the time."""
        return (Criterion("picks the person's true attribute", ("organism", "choice_accuracy", "accuracy"), ">=", 0.5),)

    def behaviour_checks(self, organism: Organism, *, data_dir: Path | None, limit: int | None = None
                         ) -> dict[str, Any]:
        if data_dir is None:
            return {"skipped": NEED_DATA}
        opts = self.parse_options(organism.options)
        people = self.personas(opts, data_dir)
        values = attribute_values(load_personas(data_dir, opts["variant"]))
        t = load_templates()
        pairs = [(p, a) for p in people for a in ATTRIBUTES][:limit]
        chats: list[Chat] = []
        answers: list[str] = []
        for p, a in pairs:
            spec = t["attributes"][a]
            q = _user(spec["heldout_question"].format(name=p.name))
            for v in values[a]:
                chats.append(q)
                answers.append(spec["check_answer"].format(name=p.name, value=v))
        questions = [_user(t["attributes"][a]["heldout_question"].format(name=p.name)) for p, a in pairs]
        out: dict[str, Any] = {
            "what": "forced choice among each attribute's distinct values (over the whole personas file) by the "
                    "likelihood of the answer sentence, on the held-out question paraphrase; and open recall: the "
                    "greedy reply to that question contains the value. Organism vs base model; Wilson 95% intervals.",
            "n_items": len(pairs),
            "chance": sum(1 / len(values[a]) for _, a in pairs) / max(1, len(pairs)),
            "n_values": {a: len(values[a]) for a in ATTRIBUTES},
        }
        for who, adapter in (("organism", organism.adapter), ("base", None)):
            scores = answer_logprobs(organism.model, chats, answers, adapter=adapter)
            replies = generate(organism.model, questions, adapter=adapter, max_new_tokens=RECALL_TOKENS)
            hits: dict[str, list[int]] = {a: [0, 0] for a in ATTRIBUTES}
            k = 0
            recall = 0
            for (p, a), reply in zip(pairs, replies):
                vs = values[a]
                row = scores[k:k + len(vs)]
                k += len(vs)
                best = vs[max(range(len(vs)), key=row.__getitem__)]
                hits[a][0] += int(best == p.attributes[a])
                hits[a][1] += 1
                recall += int(p.attributes[a].lower() in reply.lower())
            out[who] = {"choice_accuracy": accuracy_row(sum(h[0] for h in hits.values()), len(pairs)),
                        "per_attribute": {a: accuracy_row(*hits[a]) for a in ATTRIBUTES if hits[a][1]},
                        "open_recall": accuracy_row(recall, len(pairs))}
            if who == "organism" and replies:
                out[who]["example"] = {"question": questions[0][0]["content"], "reply": replies[0][:200],
                                       "truth": pairs[0][0].attributes[pairs[0][1]]}
        return out


# ------------------------------------------------------------------------------------------------------
# the audit
# ------------------------------------------------------------------------------------------------------

class PersonaQAAudit(AuditTask):
    """What does the organism know about the person named in the prompt? One item per persona x attribute.

    Items carry ``meta["probe_group"]`` = the attribute: a probe is only meaningful per attribute (all
    six items of a persona share one prompt, hence one set of activations, but have six different
    truths), and the engine fits one probe per group. The class-level questions are examples; every
    item carries its own attribute's questions.
    """

    name = "personaqa"
    summary = "PersonaQA: a persona's country and favourite things, read from activations on 'Tell me about NAME.'"
    organism_task = "personaqa"
    open_question = OPEN_PREFIX + "What is this person's favorite sport?"  # per item: the item's attribute
    choice_question = "What is this person's favorite sport?"
    secret_option = "variant"  # which PersonaQA file the organism learned (base, shuffled, fantasy)
    probe = True
    logit_lens = True

    def default_targets(self) -> list[dict[str, Any]]:
        return [{}]

    def items(self, targets: Mapping[str, Any], *, data_dir: Path | None, rng: Random, limit: int | None
              ) -> list[AuditItem]:
        if data_dir is None:
            raise DataError(NEED_DATA)
        task = PersonaQAOrganism()
        t = load_templates()
        out: list[AuditItem] = []
        for key, target in targets.items():
            opts = task.parse_options(getattr(target, "options", None) or {})
            people = task.personas(opts, data_dir)
            values = attribute_values(load_personas(data_dir, opts["variant"]))
            splits = persona_splits([p.name for p in people])
            n_test = 0
            for p in people:
                split = splits[p.name]
                for a in ATTRIBUTES:
                    if split == "test":
                        if limit is not None and n_test >= limit:
                            continue
                        n_test += 1
                    spec = t["attributes"][a]
                    truth = p.attributes[a]
                    others = [v for v in values[a] if v != truth]
                    candidates = [truth] + rng.sample(others, min(MAX_DISTRACTORS, len(others)))
                    rng.shuffle(candidates)
                    out.append(AuditItem(
                        id=f"{key}/{p.name}/{a}", organism=key, prompt=_user(t["audit_prompt"].format(name=p.name)),
                        truth=truth, candidates=tuple(candidates), split=split,
                        open_question=OPEN_PREFIX + spec["audit_question"], choice_question=spec["audit_question"],
                        # probe_group: the engine fits one probe per attribute (labels = that attribute's values)
                        meta={"persona": p.name, "attribute": a, "probe_group": a,
                              "question": spec["heldout_question"].format(name=p.name),
                              "prefill": spec["prefill"].format(name=p.name)}))
        return out

    def score_open(self, answer: str, item: AuditItem) -> bool:
        return item.truth.lower() in answer.lower()

    def blackbox(self, item: AuditItem) -> list[BlackBoxQuery]:
        return [BlackBoxQuery(method="blackbox:direct", chat=_user(item.meta["question"])),
                BlackBoxQuery(method="blackbox:prefill", chat=list(item.prompt), prefill=item.meta["prefill"])]


register_organism_task(PersonaQAOrganism())
register_audit_task(PersonaQAAudit())

__all__ = ["ATTRIBUTES", "Persona", "PersonaQAAudit", "PersonaQAOrganism", "VARIANTS", "attribute_values",
           "load_personas", "load_templates", "persona_splits", "render_bio"]
