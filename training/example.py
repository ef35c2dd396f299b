"""The record every dataset builder produces and the trainer consumes.

A ``TrainingExample`` says: run the target on ``context_ids``, read the
residuals at ``positions`` from the block at ``layer_percent`` depth, put them
into the oracle prompt with ``question``, and teach the oracle to say ``answer``.

>>> ex = TrainingExample(context_ids=(5, 6, 7), positions=(2,), layer_percent=50.0,
...                      question="Is this a test?", answer="Yes", source="demo")
>>> ex.n_positions
1
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from random import Random
from typing import Any, Protocol


@dataclass(frozen=True)
class TrainingExample:
    """One oracle training example (target context + positions + question + answer)."""

    context_ids: tuple[int, ...]
    positions: tuple[int, ...]
    layer_percent: float
    question: str
    answer: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_positions(self) -> int:
        return len(self.positions)

    def to_dict(self) -> dict[str, Any]:
        return {"context_ids": list(self.context_ids), "positions": list(self.positions),
                "layer_percent": self.layer_percent, "question": self.question, "answer": self.answer,
                "source": self.source, "meta": self.meta}


class Builder(Protocol):
    """A dataset builder: a deterministic, streamed source of examples."""

    name: str

    def examples(self, tokenizer: Any, rng: Random) -> Iterator[TrainingExample]:
        """Yield examples forever or until the source is exhausted, deterministically given ``rng``."""
        ...
