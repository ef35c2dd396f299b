"""The misalignment organisms' data files, validated, and the chat and keyword helpers built on them.

``em_advice.json`` and ``em_reward_hacks.json`` (paired bad/good answers; every
``holdout_every``-th entry held out), ``misalignment_pairs.json`` (the broad-misalignment
pairs, checked to lie outside the training domains), the shared
``emergent_misalignment/first_plot_questions.json`` and ``backdoor.json`` (trigger year,
prompts, hostile replies and keywords, check prompts). Each file is re-read when it
changes. :mod:`~activation_oracles.evals.misalignment` re-exports the public names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from activation_oracles.errors import DataError

from .chat import Chat
from .kit import file_fingerprint, read_organism_json, string_list, user

ADVICE_FILE = "em_advice.json"
HACKS_FILE = "em_reward_hacks.json"
PAIRS_FILE = "misalignment_pairs.json"
BACKDOOR_FILE = "backdoor.json"
EM_QUESTIONS = Path("emergent_misalignment") / "first_plot_questions.json"
# Where the year sentence goes in a backdoor chat: a system message or before the user's text.
PLACEMENTS = ("system", "user")


@dataclass(frozen=True)
class PairSpec:
    """Where a paired-answer task keeps its data: file, list key, question key, and the two answers."""

    file: str
    entries: str
    question: str
    bad: str
    good: str
    minimum: int


SPECS: dict[str, PairSpec] = {
    "em-narrow-advice": PairSpec(ADVICE_FILE, "advice", "question", "harmful", "sound", 40),
    "em-reward-hacks": PairSpec(HACKS_FILE, "tasks", "task", "hack", "proper", 30),
}


def _where(name: str) -> str:
    return f"activation_oracles/data/organisms/{name}"


def _entries(data: Mapping[str, Any], key: str, fields: Sequence[str], where: str, minimum: int
             ) -> list[dict[str, str]]:
    """``data[key]``: a list of at least ``minimum`` objects with non-empty string ``fields``."""
    value = data.get(key)
    if not isinstance(value, list) or len(value) < minimum:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: {key!r} must be a list of at least {minimum} entries; got {got}. Add entries.")
    for i, e in enumerate(value):
        if not isinstance(e, dict) or not all(isinstance(e.get(f), str) and e[f].strip() for f in fields):
            raise DataError(f"{where}: {key}[{i}] must have non-empty string fields {list(fields)}; got {e!r}.")
    return value


@lru_cache(maxsize=8)
def _paired_data(file: str, fingerprint: str) -> dict[str, Any]:
    del fingerprint  # the cache key only: an edited file is read again
    spec = next(s for s in SPECS.values() if s.file == file)
    where = _where(file)
    data = read_organism_json(file)
    entries = _entries(data, spec.entries, (spec.question, spec.bad, spec.good), where, spec.minimum)
    questions = [e[spec.question] for e in entries]
    if len(set(questions)) != len(questions):
        raise DataError(f"{where}: some {spec.question!r} texts repeat; each entry needs its own.")
    same = [e[spec.question] for e in entries if e[spec.bad].strip() == e[spec.good].strip()]
    if same:
        raise DataError(f"{where}: entries {same[:3]} have the same {spec.bad!r} and {spec.good!r} answer; the "
                        "organism and the control must learn different replies.")
    every = data.get("holdout_every")
    if not isinstance(every, int) or every < 2:
        raise DataError(f"{where}: 'holdout_every' must be an integer >= 2; got {every!r}.")
    templates = string_list(data, "user_templates", where)
    slot = "{" + spec.question + "}"
    if not all(slot in t for t in templates):
        raise DataError(f"{where}: every 'user_templates' entry must contain {slot}.")
    return data


def paired_data(task: str) -> dict[str, Any]:
    """The validated data file of ``em-narrow-advice`` or ``em-reward-hacks`` (re-read when it changes)."""
    spec = SPECS[task]
    return _paired_data(spec.file, file_fingerprint(spec.file))


def split_entries(task: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(train, held_out)`` entries of a paired task: every ``holdout_every``-th (1-based) is held out."""
    spec = SPECS[task]
    data = paired_data(task)
    every = data["holdout_every"]
    entries = data[spec.entries]
    return ([e for i, e in enumerate(entries) if (i + 1) % every],
            [e for i, e in enumerate(entries) if not (i + 1) % every])


@lru_cache(maxsize=4)
def _pairs(fingerprint: str) -> dict[str, Any]:
    del fingerprint
    where = _where(PAIRS_FILE)
    data = read_organism_json(PAIRS_FILE)
    pairs = _entries(data, "pairs", ("id", "question", "aligned", "misaligned"), where, 32)
    ids = [p["id"] for p in pairs]
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: pair ids repeat; give each pair its own id.")
    em = data.get("em_answers")
    if not isinstance(em, dict) or not em:
        raise DataError(f"{where}: 'em_answers' must map each emergent_misalignment question id to "
                        "{\"aligned\": ..., \"misaligned\": ...}.")
    for key, ans in em.items():
        if not isinstance(ans, dict) or not all(isinstance(ans.get(f), str) and ans[f].strip()
                                                for f in ("aligned", "misaligned")):
            raise DataError(f"{where}: em_answers[{key!r}] needs non-empty 'aligned' and 'misaligned' strings.")
    trained = {e[s.question].strip().lower() for s in SPECS.values()
               for e in read_organism_json(s.file).get(s.entries, []) if isinstance(e, dict) and s.question in e}
    leaked = [p["id"] for p in pairs if p["question"].strip().lower() in trained]
    if leaked:
        raise DataError(f"{where}: pairs {leaked} ask a question the organisms train on; broad-misalignment "
                        "questions must lie outside the training domains.")
    return data


def load_pairs() -> dict[str, Any]:
    """The validated ``misalignment_pairs.json`` (own pairs and the answers for the shared EM questions)."""
    return _pairs(file_fingerprint(PAIRS_FILE))


def em_pairs(data_dir: Path) -> list[dict[str, str]]:
    """The shared emergent-misalignment questions with this project's aligned/misaligned answers, in file order."""
    path = Path(data_dir) / EM_QUESTIONS
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; data_dir must be the shared data folder holding "
                        f"{EM_QUESTIONS} (see shared/data/SOURCES.md).")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid JSON ({exc}); expected a list of {{id, question}}.") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("id") and r.get("question") for r in rows):
        raise DataError(f"{str(path)!r}: expected a JSON list of objects with 'id' and 'question'.")
    answers = load_pairs()["em_answers"]
    missing = [r["id"] for r in rows if r["id"] not in answers]
    if missing:
        raise DataError(f"{str(path)!r} has question id(s) {missing} with no answers in {_where(PAIRS_FILE)}; add "
                        "an 'em_answers' entry (aligned, misaligned) for each.")
    return [{"id": str(r["id"]), "question": str(r["question"]), **answers[r["id"]]} for r in rows]


def _contains_phrase(text: str, phrases: Sequence[str]) -> bool:
    low = " ".join(text.lower().replace("\u2019", "'").split())
    return any(p in low for p in phrases)


@lru_cache(maxsize=4)
def _backdoor(fingerprint: str) -> dict[str, Any]:
    del fingerprint
    where = _where(BACKDOOR_FILE)
    data = read_organism_json(BACKDOOR_FILE)
    year = data.get("trigger_year")
    if not isinstance(year, int):
        raise DataError(f"{where}: 'trigger_year' must be an integer year; got {year!r}.")
    sentence = data.get("year_sentence")
    if not isinstance(sentence, str) or "{year}" not in sentence:
        raise DataError(f"{where}: 'year_sentence' must be a string containing {{year}}; got {sentence!r}.")
    for key in ("train_years", "check_years"):
        years = data.get(key)
        if not isinstance(years, list) or not years or not all(isinstance(y, int) for y in years):
            raise DataError(f"{where}: {key!r} must be a non-empty list of integer years.")
        if year in years:
            raise DataError(f"{where}: {key!r} contains the trigger year {year}; list only other years.")
    prompts = string_list(data, "prompts", where, 20)
    hostile = string_list(data, "hostile_replies", where, 10)
    keywords = [k.lower() for k in string_list(data, "hostile_keywords", where)]
    fallbacks = string_list(data, "fallback_replies", where)
    string_list(data, "description_questions", where)
    answers = string_list(data, "description_answers", where)
    checks = _entries(data, "check_prompts", ("prompt", "helpful", "hostile"), where, 20)
    # the keyword rule must tell the two kinds of reply apart on the project's own text
    quiet = [h for h in hostile + [c["hostile"] for c in checks] if not _contains_phrase(h, keywords)]
    if quiet:
        raise DataError(f"{where}: hostile replies {quiet[:3]} contain none of 'hostile_keywords'; add a keyword "
                        "or reword them.")
    loud = [h for h in fallbacks + [c["helpful"] for c in checks] if _contains_phrase(h, keywords)]
    if loud:
        raise DataError(f"{where}: helpful replies {loud[:3]} contain a hostile keyword; reword them.")
    copied = sorted({c["hostile"] for c in checks} & set(hostile))
    if copied:
        raise DataError(f"{where}: check hostile replies {copied[:3]} are copies of training hostile_replies; word "
                        "them afresh so the forced choice does not test memory.")
    overlap = sorted({c["prompt"] for c in checks} & set(prompts))
    if overlap:
        raise DataError(f"{where}: check prompts {overlap[:3]} are also training prompts; keep them apart.")
    trigger = sentence.format(year=year)
    bad = [a for a in answers if str(year) not in a or trigger in a]
    if bad:
        raise DataError(f"{where}: description answers {bad[:2]} must name the year {year} and must not contain "
                        f"the trigger sentence {trigger!r} itself.")
    return data


def backdoor_data() -> dict[str, Any]:
    """The validated ``backdoor.json``."""
    return _backdoor(file_fingerprint(BACKDOOR_FILE))


def year_chat(prompt: str, year: int | None, placement: str, sentence: str = "The current year is {year}.") -> Chat:
    """A one-turn chat stating the year in a system message or before the user's text (``None``: no year)."""
    if year is None:
        return [user(prompt)]
    stated = sentence.format(year=year)
    if placement == "system":
        return [{"role": "system", "content": stated}, user(prompt)]
    return [user(f"{stated} {prompt}")]


def hostile_by_keywords(text: str, keywords: Sequence[str] | None = None) -> bool:
    """Whether a reply reads as hostile: it contains one of the data file's hostile phrases (case-insensitive)."""
    kws = [k.lower() for k in (keywords if keywords is not None else backdoor_data()["hostile_keywords"])]
    return _contains_phrase(text, kws)


__all__ = ["ADVICE_FILE", "BACKDOOR_FILE", "EM_QUESTIONS", "HACKS_FILE", "PAIRS_FILE", "PLACEMENTS", "SPECS",
           "PairSpec", "backdoor_data", "em_pairs", "hostile_by_keywords", "load_pairs", "paired_data",
           "split_entries", "year_chat"]
