"""What an organism task is: a :class:`Recipe` (how it is fine-tuned) and the :class:`OrganismTask` base class.

Each task module (taboo, gender, ssc, personaqa, misalignment, subliminal) subclasses
:class:`OrganismTask` to turn options into training chats and to check the built
organism; :mod:`activation_oracles.evals.organism` keeps the registry of tasks and builds
them. Both names are importable from there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError, OrganismError
from activation_oracles.models import Model

from .chat import Chat
from .organism_load import Organism
from .organism_verdict import Criterion


@dataclass(frozen=True)
class Recipe:
    """How an organism is trained: data size, fluency mix and LoRA fine-tuning settings.

    ``steps=0`` means ``epochs`` passes over the examples.
    """

    # Small on purpose: a default organism trains in minutes on a CPU (48 steps of 8 chats).
    n_examples: int = 192
    fluency_fraction: float = 0.2  # share of the base model's own replies to ordinary prompts
    fluency_max_new_tokens: int = 64
    r: int = 16
    alpha: float = 32.0
    lr: float = 2e-3
    steps: int = 0
    epochs: int = 2
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.n_examples < 1:
            raise ConfigError(f"Recipe.n_examples={self.n_examples}; expected at least 1.")
        if not 0 <= self.fluency_fraction < 1:
            raise ConfigError(f"Recipe.fluency_fraction={self.fluency_fraction}; expected 0 <= f < 1.")

    def with_overrides(self, overrides: Mapping[str, Any]) -> Recipe:
        """A copy with ``overrides`` (unknown keys raise :class:`ConfigError` listing the valid ones)."""
        valid = {f.name: f.type for f in fields(self)}
        bad = sorted(set(overrides) - set(valid))
        if bad:
            raise ConfigError(f"unknown recipe key(s) {bad}; valid keys are: {', '.join(sorted(valid))}.")
        def convert(key: str, value: Any) -> Any:
            kind = type(getattr(self, key))
            if kind is bool and isinstance(value, str):  # bool("false") would be True
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ConfigError(f"recipe {key}={value!r}; expected true or false.")
                return value.lower() in ("true", "1", "yes")
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"recipe {key}={value!r}; expected a {kind.__name__}.") from None

        return replace(self, **{k: convert(k, v) for k, v in overrides.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OrganismTask:
    """One family of organisms. Subclasses fill in the data and the checks.

    Attributes:
        name: the task name used by ``ao organism build NAME``.
        summary: one line for help texts and cards.
        recipe: the default :class:`Recipe` for this task.
        option_help: option name -> help text (shown by the CLI).
        recipes_tried: what was tried to make the organism pass its criteria where its default does not (yet),
            one line per recipe with its measured figures and n; shown in its card and beside a failing verdict.
    """

    name: str = ""
    summary: str = ""
    recipe: Recipe = Recipe()
    option_help: dict[str, str] = {}
    recipes_tried: tuple[str, ...] = ()

    def parse_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and normalise options; raise :class:`OrganismError` saying what is valid."""
        if options:
            raise OrganismError(f"task {self.name!r} takes no options; got {sorted(options)}.")
        return {}

    def default_options(self) -> dict[str, Any]:
        """The options of the default organism (used by ``ao audit suite``)."""
        return {}

    def training_chats(self, options: Mapping[str, Any], rng: Random, n: int, *, base: Model,
                       data_dir: Path | None) -> list[Chat]:
        """``n`` chats ending with the assistant turn the organism should learn.

        ``base`` is the base model (some tasks rewrite its own replies, e.g. to follow a constraint);
        ``data_dir`` the shared data folder for tasks built on it (``None`` when not given).
        """
        raise NotImplementedError

    def fingerprint(self, options: Mapping[str, Any]) -> str:
        """A string that changes whenever the task's data changes (hashed into the recipe)."""
        return ""

    def behaviour_checks(self, organism: Organism, *, data_dir: Path | None, limit: int | None = None
                         ) -> dict[str, Any]:
        """Measured figures showing the organism does what it should (and hides what it should)."""
        return {}

    def criteria(self, options: Mapping[str, Any]) -> tuple[Criterion, ...] | None:
        """The figures of :meth:`behaviour_checks` an organism must reach before it is audited
        (:mod:`.organism_verdict`); ``None`` for a control variant, which is meant to hold nothing."""
        return None if options.get("variant") == "control" else ()

    def pair_criteria(self, options: Mapping[str, Any]) -> tuple[Criterion, ...]:
        """Criteria of the organism variant against its control (``{"organism": checks, "control": checks}``):
        for traits that any fine-tune of the same kind may move (judged when both are built, e.g. by the suite)."""
        return ()

    def display_name(self, options: Mapping[str, Any]) -> str:
        """A short name for the organism, e.g. ``taboo-moon``."""
        parts = [self.name] + [str(v) for _, v in sorted(options.items())]
        return "-".join(p.replace(" ", "_") for p in parts)


__all__ = ["OrganismTask", "Recipe"]
