"""Ceilings from the text itself: how well the card's yes/no questions can be answered with the text in view.

* :func:`text_baseline`: the base model (no adapter) reads the text and the question as a plain chat
  and picks Yes or No by log-likelihood. Near chance means the oracle's own language model does not
  understand the question, so it can answer a never-trained task only by what training taught it.
* :func:`family_text_baseline`: the same for the question families
  (:mod:`activation_oracles.training.families`) on their test rows, per family and question kind
  (yes/no, negated yes/no, open as a forced choice among the family's answers), with the AUROC of
  the Yes-No margin: which questions the oracle's language model can answer at all.
* :func:`text_ceiling`: an oracle trained with ``TextInPrompt`` sources
  (:mod:`activation_oracles.training.text_in_prompt`) on the same examples with the text quoted in
  each question (activations still injected): an upper bound on what reading adds.

Both use the card's examples (:func:`activation_oracles.evals.oracle_card.build_eval_sets`, same
``seed`` and ``n_per_eval``) and return rows as the card's: ``{eval, method, correct, n, accuracy,
ci_low, ci_high, chance}``, pooled and per task.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from activation_oracles.evals.chat import answer_logprobs
from activation_oracles.evals.card_sets import YES_NO, build_eval_sets
from activation_oracles.evals.oracle_card import capture_examples, score
from activation_oracles.evals.stats import accuracy_row, auroc_row
from activation_oracles.models import as_model
from activation_oracles.training.text_in_prompt import with_text

CLASSIFICATION_EVALS = ("classification_held_out", "classification_test")
MAX_OPEN_OPTIONS = 10


def _row(name: str, method: str, correct: Sequence[bool], chance: float) -> dict[str, Any]:
    return {"eval": name, "method": method, **accuracy_row(sum(map(bool, correct)), len(correct)), "chance": chance}


def _rows(name: str, method: str, correct: Sequence[bool], groups: Sequence[str], chance: float
          ) -> list[dict[str, Any]]:
    out = [_row(name, method, correct, chance)]
    for group in sorted(set(groups)):
        out.append(_row(f"{name}/{group}", method, [c for c, g in zip(correct, groups) if g == group], chance))
    return out


def text_baseline(model: Any, *, data_dir: str | os.PathLike[str], n_per_eval: int = 40, seed: int = 0,
                  evals: Sequence[str] = CLASSIFICATION_EVALS, batch_size: int = 16) -> list[dict[str, Any]]:
    """The base model's accuracy when it reads each example's text and question itself (method ``text_base``).

    >>> from activation_oracles.tiny import tiny_model
    >>> from activation_oracles.training.classification import find_shared_data
    >>> rows = text_baseline(tiny_model(n_layers=2, d_model=32), data_dir=find_shared_data(), n_per_eval=1,
    ...                      evals=["classification_test"])
    >>> rows[0]["eval"], rows[0]["method"], rows[0]["n"]
    ('classification_test', 'text_base', 1)
    """
    m = as_model(model)
    tok = m.tokenizer
    rows: list[dict[str, Any]] = []
    for es in build_eval_sets(tok, data_dir, n_per_eval=n_per_eval, seed=seed, evals=evals):
        chats, answers = [], []
        for ex in es.examples:
            text = tok.decode(list(ex.context_ids), skip_special_tokens=True).strip()
            for choice in YES_NO:
                chats.append([{"role": "user", "content": f"{text}\n\n{ex.question}"}])
                answers.append(choice)
        lp = answer_logprobs(m, chats, answers, batch_size=batch_size, progress=False)
        correct = [(YES_NO[0] if lp[2 * i] >= lp[2 * i + 1] else YES_NO[1]) == ex.answer
                   for i, ex in enumerate(es.examples)]
        rows += _rows(es.name, "text_base", correct, es.groups, es.chance)
    return rows


def family_text_baseline(model: Any, *, data_dir: str | os.PathLike[str] | None, families: Sequence[str] | None = None,
                         n_per_kind: int = 60, seed: int = 0, batch_size: int = 16) -> list[dict[str, Any]]:
    """The base model answering each family's questions about a test row it reads as plain text.

    Per family and question kind (``yes_no``, ``negated``, ``open``), ``n_per_kind`` test rows
    (deterministic given ``seed``): yes/no kinds pick Yes or No by log-likelihood, and report the
    AUROC of the Yes-minus-No margin (robust to a bias toward one answer); ``open`` picks the
    likeliest of the truth and up to ``MAX_OPEN_OPTIONS - 1`` other answers of the family, drawn per row
    (chance 1 / number of options; the mention family has 249 names). Rows: ``{eval, method,
    correct, n, accuracy, ci_low, ci_high, chance, auroc, auroc_low, auroc_high}`` (AUROC fields
    for yes/no kinds only), ``eval`` = ``family/<name>/<kind>``.

    >>> from activation_oracles.tiny import tiny_model
    >>> rows = family_text_baseline(tiny_model(n_layers=2, d_model=32), data_dir=None, families=["sentiment"],
    ...                             n_per_kind=2)
    >>> [(r["eval"], r["n"]) for r in rows]
    [('family/sentiment/yes_no', 2), ('family/sentiment/negated', 2), ('family/sentiment/open', 2)]
    """
    from random import Random

    from activation_oracles.training.families import KINDS, QuestionFamilies

    if n_per_kind < 1:
        raise ValueError(f"family_text_baseline(n_per_kind={n_per_kind}); expected at least 1 row per kind.")
    m = as_model(model)
    tok = m.tokenizer
    every = QuestionFamilies(data_dir, families=families, split="test")
    rows: list[dict[str, Any]] = []
    for fam in every.families:
        answers = sorted({fam.answer_of(c) for c in every.rows[fam.name]})
        for k, kind in enumerate(KINDS):
            weights = [0.0, 0.0, 0.0]
            weights[k] = 1.0
            b = QuestionFamilies(data_dir, families=[fam.name], split="test", kind_weights=weights)
            stream = b.examples(tok, Random(f"{seed}:{fam.name}:{kind}"))
            examples = [next(stream) for _ in range(n_per_kind)]
            pick = Random(f"{seed}:{fam.name}:{kind}:options")
            per_row = []
            for ex in examples:
                if kind == "open":
                    others = [a for a in answers if a != ex.answer]
                    per_row.append([ex.answer, *pick.sample(others, min(MAX_OPEN_OPTIONS - 1, len(others)))])
                else:
                    per_row.append(list(YES_NO))
            chats, scored = [], []
            for ex, options in zip(examples, per_row):
                for option in options:
                    chats.append([{"role": "user", "content": f"{ex.meta['text']}\n\n{ex.question}"}])
                    scored.append(option)
            lp = answer_logprobs(m, chats, scored, batch_size=batch_size, progress=False)
            correct, margins, at = [], [], 0
            for ex, options in zip(examples, per_row):
                mine = lp[at:at + len(options)]
                at += len(options)
                correct.append(options[max(range(len(options)), key=mine.__getitem__)] == ex.answer)
                margins.append(mine[0] - mine[1] if kind != "open" else 0.0)
            row = _row(f"family/{fam.name}/{kind}", "text_base", correct, 1 / len(per_row[0]))
            if kind != "open":
                pos = [d for d, ex in zip(margins, examples) if ex.answer == YES_NO[0]]
                neg = [d for d, ex in zip(margins, examples) if ex.answer != YES_NO[0]]
                if pos and neg:
                    a = auroc_row(pos, neg, seed=seed)
                    row.update(auroc=a["auroc"], auroc_low=a["ci_low"], auroc_high=a["ci_high"])
            rows.append(row)
    return rows


def text_ceiling(oracle: Any, target: Any, *, data_dir: str | os.PathLike[str], n_per_eval: int = 40, seed: int = 0,
                 evals: Sequence[str] = CLASSIFICATION_EVALS, batch_size: int = 16) -> list[dict[str, Any]]:
    """Accuracy of ``oracle`` on the card's classification evaluations with the text in each question.

    The same examples as the card's (same ``seed`` and ``n_per_eval``), rewritten by :func:`with_text`;
    the activations are still captured and injected. Rows as the card's: ``{eval, method, correct, n,
    accuracy, ci_low, ci_high, chance}``, pooled and per task, for the oracle and its coeff0 control
    (the text alone).
    """
    m = as_model(target)
    rows: list[dict[str, Any]] = []
    for es in build_eval_sets(m.tokenizer, data_dir, n_per_eval=n_per_eval, seed=seed, evals=evals):
        acts = capture_examples(m, es.examples, batch_size=batch_size)
        es.examples = [with_text(e, m.tokenizer) for e in es.examples]
        for method, orc in (("text_in_prompt", oracle), ("text_in_prompt_coeff0", oracle.with_config(coeff=0.0))):
            res = score(orc, es, acts, batch_size=batch_size)
            rows += _rows(es.name, method, [r["correct"] for r in res], es.groups, es.chance)
    return rows
