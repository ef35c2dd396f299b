"""Ceilings from the text itself: how well the card's yes/no questions can be answered with the text in view.

* :func:`text_baseline`: the base model (no adapter) reads the text and the question as a plain chat
  and picks Yes or No by log-likelihood. Near chance means the oracle's own language model does not
  understand the question, so it can answer a never-trained task only by what training taught it.
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
from activation_oracles.evals.stats import accuracy_row
from activation_oracles.models import as_model
from activation_oracles.training.text_in_prompt import with_text

CLASSIFICATION_EVALS = ("classification_held_out", "classification_test")


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
