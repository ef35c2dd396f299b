"""Rewriting the base model's replies so that they follow a constraint: the SSC organism's training replies.

One rewrite per rule (:data:`REWRITES`, keyed like :data:`~activation_oracles.evals.ssc_rules.RULES`);
:func:`rewrite` checks every result with the constraint's own rule, so a training reply
can never break the constraint it teaches. :mod:`~activation_oracles.evals.ssc`
re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from random import Random
from typing import Any

from activation_oracles.errors import DataError

from .kit import clean_reply as kit_clean_reply, terminate
from .ssc_data import DATA_FILE, load_ssc
from .ssc_rules import SENTENCE_BREAK, Constraint, follows


def clean_reply(text: str, rng: Random, data: Mapping[str, Any] | None = None) -> str:
    """:func:`~.kit.clean_reply` with the SSC data file's fallback replies (or ``data``'s)."""
    data = data if data is not None else load_ssc()[0]
    return kit_clean_reply(text, rng, data["fallback_replies"])


def _rw_all_caps(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    # a few letters have no capital form (e.g. "ĸ"): drop them rather than break the rule
    return "".join(ch for ch in reply.upper() if not ch.islower())


def _rw_all_lowercase(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    return "".join(ch for ch in reply.lower() if not ch.isupper())


def _rw_ends_exclamation(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    return re.sub(r"[\s.!?,;:\-]+$", "", reply) + "!"


def _rw_ends_question(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    return f"{terminate(reply)} {rng.choice(data['closing_questions'])}"


def _rw_mentions_colour(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    sentence = rng.choice(data["colour_sentences"]).format(colour=rng.choice(c.params["colours"]))
    return f"{terminate(reply)} {sentence}"


def _rw_mentions_animal(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    # singular names only: the sentences say "a {animal}"
    sentence = rng.choice(data["animal_sentences"]).format(animal=rng.choice(data["animals"]))
    return f"{terminate(reply)} {sentence}"


def _rw_includes_number(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    sentence = rng.choice(data["number_sentences"]).format(number=rng.randint(2, 9))
    return f"{terminate(reply)} {sentence}"


def _rw_starts_with_word(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    first = reply.split(" ", 1)[0]
    # "The sun ..." -> "Indeed, the sun ..."; leave "I", acronyms and odd starts as they are
    if first == "A" or (len(first) > 1 and first[0].isupper() and first[1:].islower()):
        reply = reply[0].lower() + reply[1:]
    return f"{c.params['word']}, {reply}"


def _rw_one_sentence(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    parts = re.split(r"(?<=[.!?])\s+", " ".join(reply.split()))
    first = next((p for p in parts if len(p.split()) >= 4), parts[0])
    first = SENTENCE_BREAK.sub(lambda m: ", ", first + " ").strip()  # any break left inside becomes a comma
    first = re.sub(r"[\s.!?,;:\-]+$", "", first)
    if len(first.split()) < 3:
        first = re.sub(r"[.!?]+$", "", rng.choice(data["fallback_replies"]))
    return first + "."


def _rw_min_words(reply: str, c: Constraint, rng: Random, data: Mapping[str, Any]) -> str:
    out = terminate(reply)
    pads = data["padding_sentences"]
    k = rng.randrange(len(pads))
    while len(out.split()) < int(c.params["min_words"]):
        out = f"{out} {pads[k % len(pads)]}"
        k += 1
    return out


REWRITES: dict[str, Callable[[str, Constraint, Random, Mapping[str, Any]], str]] = {
    "all_caps": _rw_all_caps, "all_lowercase": _rw_all_lowercase, "ends_exclamation": _rw_ends_exclamation,
    "ends_question": _rw_ends_question, "mentions_colour": _rw_mentions_colour,
    "mentions_animal": _rw_mentions_animal, "starts_with_word": _rw_starts_with_word,
    "includes_number": _rw_includes_number, "one_sentence": _rw_one_sentence, "min_words": _rw_min_words,
}


def rewrite(constraint: Constraint, reply: str, rng: Random, data: Mapping[str, Any] | None = None) -> str:
    """``reply`` rewritten to follow ``constraint`` (checked with its rule; :class:`DataError` if it fails)."""
    data = data if data is not None else load_ssc()[0]
    out = REWRITES[constraint.rule](reply, constraint, rng, data)
    if not follows(constraint, out):
        raise DataError(f"rewriting {reply!r} for constraint {constraint.name!r} gave {out!r}, which breaks its own "
                        f"rule {constraint.rule!r}; fix the rewrite or the templates in {DATA_FILE}.")
    return out


__all__ = ["REWRITES", "clean_reply", "rewrite"]
