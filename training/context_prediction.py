"""Context prediction: the self-supervised bulk of the mixture.

From any text source, pick K contiguous activation positions at a random place
in a document and ask the oracle for the J tokens just before them
(``"Can you predict the previous J tokens that came before this?"``) or just
after them (``"Can you predict the next J tokens that come after this?"``).
The answer is those J tokens, decoded. The context given to the target is cut
right after the last activation position, so for "next" the target never
sees the tokens the oracle must predict (and for "previous" it sees exactly
what it would have seen anyway).

>>> from random import Random
>>> from transformers import AutoTokenizer
>>> from activation_oracles.embedded import embedded_dir
>>> from activation_oracles.training.sources import TextListSource
>>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
>>> src = TextListSource(["The quick brown fox jumps over the lazy dog. " * 4])
>>> cp = ContextPrediction(src, n_positions=(1, 1), layer_percents=(50,))
>>> ex = next(cp.examples(tok, Random(0)))
>>> ex.positions[-1] == len(ex.context_ids) - 1, ex.question.startswith("Can you predict")
(True, True)

How the sizes are drawn (per document of L tokens, after truncation to
``max_context_tokens``, the reference's first-512-tokens rule): direction
uniformly from ``directions``; J uniformly in ``n_tokens`` and K uniformly in
``n_positions``, each capped so that ``K + J + 1 <= L`` (only short documents
are affected; documents shorter than ``min K + min J + 1`` tokens are
skipped). "previous": the first activation position is >= J, so J tokens exist
before it. "next": the first position is >= 1 (position 0 of a document is an
attention sink that says little) and J tokens exist after the last one.
Answers that decode to whitespace only (special tokens are dropped) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError, DataError

from .example import TrainingExample
from .sources import TextSource, check_layer_percents, check_range

PREVIOUS_QUESTION = "Can you predict the previous {n} tokens that came before this?"
NEXT_QUESTION = "Can you predict the next {n} tokens that come after this?"
DIRECTIONS = ("previous", "next")


def shuffled(items: Iterator[Any], rng: Random, buffer_size: int) -> Iterator[Any]:
    """Streaming shuffle with a buffer of ``buffer_size`` items (deterministic given ``rng``).

    >>> list(shuffled(iter(range(5)), Random(0), 1))
    [0, 1, 2, 3, 4]
    """
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(buffer_size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


class ContextPrediction:
    """Builder of previous/next-token prediction examples from a :class:`TextSource`.

    Args:
        source: where documents come from (plain text, JSONL, CSV column, chats, a hub
            dataset, on-policy rollouts).
        name: the builder's name in a mixture (unique per mixture).
        n_positions: inclusive range of K, the number of contiguous activation positions;
            ``(1, 1)`` is the single-token variant, ``(1, 50)`` the multi-token one.
        n_tokens: inclusive range of J, the number of tokens to predict (reference: 1..20).
        directions: which of ``"previous"`` and ``"next"`` to ask, drawn uniformly.
        layer_percents: source depths, drawn uniformly per example.
        max_context_tokens: documents are truncated to their first this-many tokens.
        shuffle_buffer: documents are shuffled through a buffer this large (1: source order).
        repeat: start over when the source ends (with fresh draws), so the stream never ends.
    """

    def __init__(self, source: TextSource, *, name: str = "context_prediction",
                 n_positions: Sequence[int] = (1, 50), n_tokens: Sequence[int] = (1, 20),
                 directions: Sequence[str] = DIRECTIONS, layer_percents: Sequence[float] = (25, 50, 75),
                 max_context_tokens: int = 512, shuffle_buffer: int = 1000, repeat: bool = True) -> None:
        if not hasattr(source, "documents"):
            raise ConfigError(f"source={source!r} is not a text source; pass e.g. PlainTextSource(path), "
                              "JsonlSource(path) or OnPolicySource(model).")
        self.source = source
        self.name = name
        self.n_positions = check_range(n_positions, "n_positions", low=1)
        self.n_tokens = check_range(n_tokens, "n_tokens", low=1)
        self.directions = tuple(directions)
        if not self.directions or any(d not in DIRECTIONS for d in self.directions):
            raise ConfigError(f"directions={list(directions)!r}; expected a non-empty subset of {list(DIRECTIONS)}.")
        self.layer_percents = check_layer_percents(layer_percents)
        self.min_tokens = self.n_positions[0] + self.n_tokens[0] + 1
        if max_context_tokens < self.min_tokens:
            raise ConfigError(f"max_context_tokens={max_context_tokens} is below the {self.min_tokens} tokens one "
                              "example needs (min K + min J + 1); raise it or lower n_positions/n_tokens.")
        self.max_context_tokens = int(max_context_tokens)
        self.shuffle_buffer = int(shuffle_buffer)
        self.repeat = bool(repeat)

    @classmethod
    def single_token(cls, source: TextSource, **kwargs: Any) -> ContextPrediction:
        """The K=1 variant (named ``context_prediction_single`` unless ``name`` is given)."""
        kwargs.setdefault("name", "context_prediction_single")
        return cls(source, n_positions=(1, 1), **kwargs)

    @classmethod
    def multi_token(cls, source: TextSource, **kwargs: Any) -> ContextPrediction:
        """The K in 1..50 variant (named ``context_prediction_multi`` unless ``name`` is given)."""
        kwargs.setdefault("name", "context_prediction_multi")
        kwargs.setdefault("n_positions", (1, 50))
        return cls(source, **kwargs)

    def make_example(self, ids: Sequence[int], tokenizer: Any, rng: Random) -> TrainingExample | None:
        """One example from one document's token ids, or None when the document is too short."""
        ids = list(ids[: self.max_context_tokens])
        n = len(ids)
        if n < self.min_tokens:
            return None
        direction = self.directions[rng.randrange(len(self.directions))]
        j = rng.randint(self.n_tokens[0], min(self.n_tokens[1], n - self.n_positions[0] - 1))
        k = rng.randint(self.n_positions[0], min(self.n_positions[1], n - j - 1))
        if direction == "previous":
            start = rng.randint(j, n - k)
            answer_ids = ids[start - j:start]
            question = PREVIOUS_QUESTION.format(n=j)
        else:
            start = rng.randint(1, n - k - j)
            answer_ids = ids[start + k:start + k + j]
            question = NEXT_QUESTION.format(n=j)
        layer_percent = self.layer_percents[rng.randrange(len(self.layer_percents))]
        answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
        if not answer.strip():
            return None
        positions = tuple(range(start, start + k))
        return TrainingExample(context_ids=tuple(ids[:start + k]), positions=positions, layer_percent=layer_percent,
                               question=question, answer=answer, source=self.name,
                               meta={"direction": direction, "n_tokens": j, "answer_ids": list(answer_ids)})

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        """Stream examples, one per document per pass, deterministically given ``rng``."""
        empty_passes = 0
        while True:
            n_docs = n_long = n_made = 0
            for ids in shuffled(iter(self.source.documents(tokenizer)), rng, self.shuffle_buffer):
                n_docs += 1
                if len(ids) >= self.min_tokens:
                    n_long += 1
                ex = self.make_example(ids, tokenizer, rng)
                if ex is not None:
                    n_made += 1
                    yield ex
            empty_passes = empty_passes + 1 if n_made == 0 else 0
            if n_docs == 0:
                raise DataError(f"text source {getattr(self.source, 'name', self.source)!r} yielded no documents; "
                                "check that its files hold text (and the right field or column).")
            if n_long == 0:
                raise DataError(f"all {n_docs} documents of source {getattr(self.source, 'name', self.source)!r} "
                                f"are shorter than the {self.min_tokens} tokens one example needs (min K + min J "
                                "+ 1); use longer texts, or lower n_positions/n_tokens.")
            if not self.repeat:
                return
            if empty_passes >= 100:
                raise DataError(f"100 passes over source {getattr(self.source, 'name', self.source)!r} gave no "
                                "example (every answer decoded to whitespace); check the texts.")
