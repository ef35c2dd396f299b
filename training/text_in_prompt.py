"""The text-in-prompt ceiling: the same questions with the target's text written into the oracle's prompt.

An activation oracle answers with its own language model. If that model, fine-tuned on the
same mixture *with the text in plain view* (and the activations still injected), cannot
answer a held-out task's questions, no activation reader built on it can: the text-in-prompt
oracle is an upper bound on what reading adds. ``TextInPrompt`` wraps any data source and
rewrites each example's question to ``Text: "..."`` + the question;
:func:`activation_oracles.evals.text_ceiling.text_ceiling` evaluates an oracle trained that way on
the card's classification sets rewritten the same way.

Train one with a source of kind ``activation_oracles.training.text_in_prompt:TextInPrompt``
whose params name the wrapped source (``inner_kind`` and ``inner``, the wrapped source's params).

>>> from activation_oracles.training.example import TrainingExample
>>> from activation_oracles.tiny import tiny_model
>>> tok = tiny_model(n_layers=2, d_model=32).tokenizer
>>> ex = TrainingExample(tuple(tok("Paris is in France.")["input_ids"]), (3,), 50.0, "Is this true?", "Yes", "x")
>>> with_text(ex, tok).question
'Text: "Paris is in France."\\nIs this true?'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from random import Random
from typing import Any

from .example import TrainingExample


def with_text(example: TrainingExample, tokenizer: Any) -> TrainingExample:
    """``example`` with its context's text quoted before its question (positions and answer unchanged)."""
    text = tokenizer.decode(list(example.context_ids), skip_special_tokens=True).strip()
    return dataclasses.replace(example, question=f'Text: "{text}"\n{example.question}',
                               meta={**example.meta, "text_in_prompt": True})


class TextInPrompt:
    """A data source: another source's examples with their text written into the question.

    Args:
        inner_kind: the wrapped source's kind (``classification``, ``families``, ...).
        inner: the wrapped source's params, as in its own ``[[data.sources]]`` table.
        layer_percents: passed on to the wrapped source unless ``inner`` sets its own.
        name: this source's name in the run's metrics (default: ``text_<inner name>``).
    """

    def __init__(self, inner_kind: str, inner: dict[str, Any] | None = None, *,
                 layer_percents: Sequence[float] = (50.0,), name: str = "") -> None:
        from ..errors import ConfigError
        from .config import SourceSpec
        from .source_registry import build_builder

        if inner_kind.endswith(":TextInPrompt") or inner_kind == "context_prediction":
            raise ConfigError(f"TextInPrompt(inner_kind={inner_kind!r}): expected a question-answering source "
                              "(classification, families, system_prompt_qa); context prediction with its text in "
                              "the prompt would be copying, not a ceiling.")
        self.inner = build_builder(SourceSpec(inner_kind, 1.0, dict(inner or {})), layer_percents,
                                   where="TextInPrompt's inner source")
        self.name = name or f"text_{getattr(self.inner, 'name', inner_kind)}"

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        for ex in self.inner.examples(tokenizer, rng):
            yield dataclasses.replace(with_text(ex, tokenizer), source=self.name)
