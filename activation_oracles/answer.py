"""An open answer that knows whether it was cut: :class:`Answer`, a ``str`` with a ``truncated`` flag.

Why a ``str`` subclass: ``ActivationOracle.ask`` has always returned plain strings, and every caller
(audits, reports, JSON, f-strings) keeps working unchanged; a caller who cares can read
``answer.truncated`` to tell an answer the oracle *ended* (its end-of-turn token) from one that
ran into ``max_new_tokens`` and may stop mid-sentence.

>>> a = Answer("The text is about owls", truncated=True)
>>> a == "The text is about owls", a.truncated, isinstance(a, str)
(True, True, True)
>>> import copy, json
>>> json.dumps(a), copy.deepcopy(a).truncated
('"The text is about owls"', True)
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "Answer"]

#: ``ask``'s answer budget in tokens. Generation stops at the oracle's end-of-turn token, so a short
#: answer costs only its own tokens; the budget only caps a rambling one. 64 fits the sentence-long
#: descriptions oracles give (48, the earlier default, cut some mid-sentence).
DEFAULT_MAX_NEW_TOKENS = 64


class Answer(str):
    """The oracle's answer text; ``truncated`` is True when it hit the token budget before ending its turn."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False) -> Answer:
        self = super().__new__(cls, text)
        self.truncated = bool(truncated)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Answer, (str(self), self.truncated))
