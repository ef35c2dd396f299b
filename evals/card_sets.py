"""The oracle card's evaluation sets: which examples each evaluation holds, and how it is scored.

Built deterministically (by ``seed``) with the project's own dataset builders, read at 50% depth;
:mod:`activation_oracles.evals.oracle_card` (whose docstring describes each evaluation) scores an
oracle and its three controls on them, and :mod:`activation_oracles.evals.text_ceiling` scores the
text itself on the same examples.

>>> describe_hit("Something about mice.", "The owl hunts mice at night.")
True
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

EVALS = ("classification_test", "classification_held_out", "system_prompt_qa", "context_next", "context_previous",
         "describe")
DESCRIBE_POSITIONS = 16
DESCRIBE_MAX_NEW_TOKENS = 24
_STOP_WORDS = frozenset("""this that with from have will would there their they them then than what when where which
while about into your yours some such only also just more most very been being were does doesn't don't cannot can't
isn't it's these those other others because should could every many much make makes made like over under after
before each both here how who whom whose why all any not nor our out own same too can did has had its the and for
are but was you one two""".split())
YES_NO = ("Yes", "No")
EVAL_LAYER_PERCENT = 50.0
CONTEXT_COLUMN = "Incorrect Answers"  # TruthfulQA text the smollm2-135m mixture never trains on
MAX_CONTEXT_TOKENS = 128


@dataclass
class EvalSet:
    """The examples of one evaluation and how they are scored."""

    name: str
    kind: str  # "choose" (argmax over choices), "exact" (greedy ask, normalised exact match) or "describe"
    chance: float
    examples: list[Any]  # TrainingExample
    choices: list[tuple[str, ...]] = field(default_factory=list)  # per example, for "choose"
    groups: list[str] = field(default_factory=list)  # per example subgroup (e.g. the task), optional


# -- building the examples -----------------------------------------------------------------------------

def normalise_answer(text: str) -> str:
    """An answer as exact-match scoring compares it: stripped and lower-cased."""
    return text.strip().lower()


def _take(stream: Iterator[Any], n: int, max_draws: int | None = None) -> list[Any]:
    """The first ``n`` distinct examples (context, positions, question) of a stream."""
    seen: set[tuple[Any, ...]] = set()
    out: list[Any] = []
    max_draws = max_draws if max_draws is not None else 50 * n + 100
    for draws, ex in enumerate(stream):
        key = (ex.context_ids, ex.positions, ex.question)
        if key not in seen:
            seen.add(key)
            out.append(ex)
        if len(out) >= n or draws + 1 >= max_draws:
            break
    return out


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z']+", text.lower()))


def _similarity(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def spqa_distractors(qa: dict[str, list[tuple[str, str]]], label: str, question: str, answer: str, rng: Random,
                     k: int = 3) -> list[str]:
    """``k`` answers that other labels give to the questions most similar to ``question``.

    Each other label offers its answer to its own most similar question (word-set Jaccard);
    the labels whose question is closest win (an identical question first), ties broken by a
    shuffle from ``rng``, so the result is deterministic given ``rng``. Answers equal to the true
    one (after strip + lowercase) or to each other are skipped.
    """
    q = _words(question)
    others = sorted(lb for lb in qa if lb != label)
    rng.shuffle(others)
    offers = []
    for rank, other in enumerate(others):
        sim, answer_other = max(((_similarity(q, _words(pq)), pa) for pq, pa in qa[other]), key=lambda t: t[0])
        offers.append((-sim, rank, answer_other))
    out: list[str] = []
    taken = {normalise_answer(answer)}
    for _, _, candidate in sorted(offers):
        if normalise_answer(candidate) not in taken:
            out.append(candidate)
            taken.add(normalise_answer(candidate))
        if len(out) == k:
            break
    return out


def _latentqa_paths(data_dir: Path) -> tuple[Path, list[Path]]:
    """qa.json and the dialogue files, from the folder that holds qa.json (as the training preset does)."""
    lqa = data_dir / "latentqa"
    qa_dir = lqa / "train" if (lqa / "train" / "qa.json").exists() else lqa / "eval"
    return qa_dir / "qa.json", [qa_dir / n for n in ("system.json", "stimulus.json") if (qa_dir / n).exists()]


def build_eval_sets(tokenizer: Any, data_dir: str | os.PathLike[str], *, n_per_eval: int = 100, seed: int = 0,
                    evals: Sequence[str] = EVALS, layer_percent: float = EVAL_LAYER_PERCENT,
                    context_column: str = CONTEXT_COLUMN) -> list[EvalSet]:
    """The examples of each evaluation in ``evals``, deterministic given ``seed``.

    ``data_dir`` holds ``classification/``, ``latentqa/`` and ``truthfulqa/`` (``shared/data``).
    """
    from activation_oracles.errors import ConfigError
    from activation_oracles.training.classification import DEFAULT_TASKS, Classification
    from activation_oracles.training.context_prediction import ContextPrediction
    from activation_oracles.training.sources import CsvColumnSource
    from activation_oracles.training.system_prompt_qa import SystemPromptQA

    unknown = sorted(set(evals) - set(EVALS))
    if unknown:
        raise ConfigError(f"unknown evaluations {unknown}; expected a subset of {list(EVALS)}.")
    root = Path(data_dir).expanduser()
    cls_dir = root / "classification"
    lp = (layer_percent,)
    common = {"layer_percents": lp, "max_context_tokens": MAX_CONTEXT_TOKENS}
    sets: list[EvalSet] = []
    for name in evals:
        rng = Random(f"{seed}:{name}")
        if name == "classification_test":
            ex = _take(Classification(cls_dir, split="test", **common).examples(tokenizer, rng), n_per_eval)
            sets.append(EvalSet(name, "choose", 0.5, ex, [YES_NO] * len(ex), [e.meta["task"] for e in ex]))
        elif name == "classification_held_out":
            ex = []
            for task in sorted(t.name for t in DEFAULT_TASKS.values() if t.held_out):
                b = Classification(cls_dir, tasks=[task], split="held_out", **common)
                ex += _take(b.examples(tokenizer, Random(f"{seed}:{name}:{task}")), n_per_eval)
            sets.append(EvalSet(name, "choose", 0.5, ex, [YES_NO] * len(ex), [e.meta["task"] for e in ex]))
        elif name == "system_prompt_qa":
            qa_path, dialogues = _latentqa_paths(root)
            b = SystemPromptQA(qa_path, dialogues, split="test", **common)
            ex = _take(b.examples(tokenizer, rng), n_per_eval)
            choices = []
            for e in ex:
                d_rng = Random(f"{seed}:{name}:distractors:{e.meta['label']}:{e.meta['qa_index']}")
                options = [e.answer] + spqa_distractors(b.qa, e.meta["label"], e.question, e.answer, d_rng)
                d_rng.shuffle(options)
                choices.append(tuple(options))
            sets.append(EvalSet(name, "choose", 1 / max(len(choices[0]) if choices else 4, 1), ex, choices))
        elif name == "describe":
            ex = _describe_examples(tokenizer, root / "truthfulqa" / "TruthfulQA.csv", context_column, n_per_eval,
                                    rng, layer_percent)
            sets.append(EvalSet(name, "describe", 0.0, ex))
        else:
            direction = name.removeprefix("context_")
            source = CsvColumnSource(root / "truthfulqa" / "TruthfulQA.csv", context_column, name="truthfulqa_eval")
            b = ContextPrediction(source, name=name, n_positions=(1, 1), n_tokens=(1, 1), directions=(direction,),
                                  shuffle_buffer=256, **common)
            ex = _take(b.examples(tokenizer, rng), n_per_eval)
            sets.append(EvalSet(name, "exact", 0.0, ex))
    return sets


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words of >= 4 letters that are not stop words (what a description should name)."""
    return frozenset(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in _STOP_WORDS)


def describe_hit(description: str, text: str) -> bool:
    """Whether ``description`` names a content word of ``text`` that the describe question does not contain."""
    from activation_oracles.oracle import DESCRIBE_QUESTION

    return bool((content_words(text) - content_words(DESCRIBE_QUESTION)) & content_words(description))


def _describe_examples(tokenizer: Any, csv_path: Path, column: str, n: int, rng: Random, layer_percent: float
                       ) -> list[Any]:
    """``n`` TruthfulQA texts (one of the column's answers each), read at their last <= 16 tokens."""
    import csv

    from activation_oracles.oracle import DESCRIBE_QUESTION
    from activation_oracles.training.classification import encode_with_span
    from activation_oracles.training.example import TrainingExample

    with csv_path.open(newline="", encoding="utf-8") as f:
        texts = sorted({t.strip() for r in csv.DictReader(f) for t in (r.get(column) or "").split(";")
                        if len(content_words(t)) >= 2})
    rng.shuffle(texts)
    out = []
    for text in texts[:n]:
        ids, (start, stop) = encode_with_span(tokenizer, text)
        positions = tuple(range(max(start, stop - DESCRIBE_POSITIONS), stop))
        out.append(TrainingExample(ids, positions, layer_percent, DESCRIBE_QUESTION, text, "describe",
                                   meta={"text": text}))
    return out


# -- activations ---------------------------------------------------------------------------------------
