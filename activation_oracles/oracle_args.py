"""What the oracle's public calls accept, checked before any forward pass (so bad input changes nothing).

``pair_inputs`` pairs activation sets with questions (one with many, or two equal lists) and says
whether the caller gave a single pair (then one result is returned, not a list);
``check_choices`` and ``check_overrides`` check ``choose``'s choices and the settings given to
``ActivationOracle.with_config`` / ``untrained``.

>>> check_choices(["Yes", "No"])
['Yes', 'No']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .activations import Activations
from .checks import check_int, check_real, check_text
from .config import OracleConfig
from .errors import (ActivationsMismatchError, ArgumentTypeError, ChoicesError, ConfigError, EmptyInputError,
                     LayerNotFoundError, PositionError)


def pair_inputs(acts: Any, question: Any) -> tuple[list[tuple[Activations, str]], bool]:
    acts_many = isinstance(acts, (list, tuple))
    q_many = isinstance(question, (list, tuple))
    if q_many and not question:
        raise EmptyInputError("the list of questions is empty; ask at least one question.")
    if acts_many and not acts:
        raise PositionError("the list of activations is empty; pass at least one Activations.")
    if not acts_many and not isinstance(acts, Activations):
        raise ActivationsMismatchError(f"acts is a {type(acts).__name__} ({acts!r:.60}); expected Activations (from "
                                       "ao.capture or Activations.load) or a list of them.")
    for i, a in enumerate(acts if acts_many else []):
        if not isinstance(a, Activations):
            raise ActivationsMismatchError(f"acts[{i}] is a {type(a).__name__} ({a!r:.60}); expected Activations "
                                           "(from ao.capture or Activations.load).")
    for q in (question if q_many else [question]):
        if not isinstance(q, str):
            raise ArgumentTypeError(f"question={q!r:.60} ({type(q).__name__}); expected a string such as "
                                    "'What is the secret word?'.")
        if not q.strip():
            raise EmptyInputError(f"a question is empty ({q!r}); ask the oracle something, e.g. 'What is the secret "
                                  "word?'.")
        check_text("question", q)
    if acts_many and q_many:
        if len(acts) != len(question):
            raise EmptyInputError(f"got {len(acts)} activation sets and {len(question)} questions; pass lists of "
                                  "equal length (paired), or one of them alone.")
        return list(zip(acts, question)), False
    if acts_many:
        return [(a, question) for a in acts], False
    if q_many:
        return [(acts, q) for q in question], False
    return [(acts, question)], True


def check_overrides(changes: dict[str, Any], n_layers: int, fixed: tuple[str, ...] = ()) -> None:
    """Config overrides (``with_config``, ``untrained``): known keys and sane values, checked up front.

    A typo would otherwise be a bare ``TypeError`` from the dataclass, and ``coeff=float("nan")``
    or ``injection_layer=99`` would be accepted here and fail (or poison every answer) later.
    """
    from dataclasses import fields

    valid = [f.name for f in fields(OracleConfig) if f.name not in fixed]
    for key, value in changes.items():
        if key not in valid:
            why = " (it comes from the model)" if key in fixed else ""
            raise ConfigError(f"unknown oracle setting {key!r}{why}; valid settings are: {', '.join(sorted(valid))}.")
        if key == "coeff":
            check_real("coeff", value, fix="c in h + c*||h||*v/||v||: 1 is the reference, 0 the no-information control.")
        elif key == "injection_layer":
            check_int("injection_layer", value)
            if not 0 <= value < n_layers:
                raise LayerNotFoundError(f"injection_layer={value} is outside the oracle's {n_layers} blocks; expected "
                                         f"an index in [0, {n_layers}) (the reference uses 1).")
        elif key == "max_positions":
            check_int("max_positions", value, minimum=1)
        elif key in ("placeholder", "prompt_template", "mode", "adapter_name", "base_model"):
            if not isinstance(value, str):
                raise ArgumentTypeError(f"{key}={value!r:.60} ({type(value).__name__}); expected a string.")
            check_text(key, value)


def check_choices(choices: Sequence[str]) -> list[str]:
    if isinstance(choices, str):
        raise ChoicesError(f"choices={choices!r} is a string; pass a list such as ['Yes', 'No'].")
    if not isinstance(choices, (list, tuple)):
        raise ChoicesError(f"choices={choices!r:.60} ({type(choices).__name__}); pass a list such as ['Yes', 'No'].")
    choice_list = list(choices)
    if len(choice_list) < 2:
        raise ChoicesError(f"choices={choice_list!r}; pass at least two choices, e.g. ['Yes', 'No'].")
    for c in choice_list:
        if not isinstance(c, str) or not c.strip():
            raise ChoicesError(f"choices={choice_list!r} holds an empty choice; every choice needs text.")
    for c in choice_list:
        check_text("choice", c)
    if len(set(choice_list)) != len(choice_list):
        dups = sorted({c for c in choice_list if choice_list.count(c) > 1})
        raise ChoicesError(f"choices {dups} appear more than once; each choice must be distinct.")
    return choice_list
