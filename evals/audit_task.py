"""What an audit asks: items (prompts the target sees, the hidden truth, the candidates) and scoring rules.

An :class:`AuditTask` describes one audit (taboo, gender, ...). The engine in
:mod:`activation_oracles.evals.audit` runs every method on its items: the oracle
(open answers and forced choices, on full-sequence, last-10-token and single-token
inputs), its controls (shuffled activations, ``coeff=0``), the untrained oracle,
black-box questioning of the target, a logit lens and a linear probe.

Items carry a ``split``: ``"val"`` items train the probe and pick the logit lens's
layer; only ``"test"`` items are scored, so no baseline is tuned on what it is
graded on.

>>> from activation_oracles.evals.audit_task import AuditItem, contains_word
>>> item = AuditItem(id="0", organism="taboo-moon", prompt=[{"role": "user", "content": "Hint?"}],
...                  truth="moon", candidates=("moon", "sun"))
>>> contains_word("It is the Moon.", "moon"), contains_word("moonlight", "moon")
(True, False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError, UnknownTaskError

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class AuditItem:
    """One audit example.

    Attributes:
        id: unique within the audit.
        organism: the target's key in the targets mapping (``""``: the base model itself).
        prompt: the chat the target sees; activations are read on it (generation prompt appended).
        truth: the hidden fact, one of ``candidates``.
        candidates: forced-choice answers (the oracle's ``choose``, the logit lens, black-box likelihoods).
        split: ``"val"`` (probe training, layer choice) or ``"test"`` (scored).
        open_question / choice_question: per-item oracle questions ("" = the task's).
        meta: anything a task's scoring needs (e.g. the constraint's rule).
    """

    id: str
    organism: str
    prompt: Chat
    truth: str
    candidates: tuple[str, ...]
    split: str = "test"
    open_question: str = ""
    choice_question: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlackBoxQuery:
    """A black-box attempt on the target: a chat, an optional forced start of the reply, and a method name."""

    method: str  # "blackbox:direct" or "blackbox:prefill"
    chat: Chat
    prefill: str = ""


class AuditTask:
    """One audit. Subclasses set the questions and implement :meth:`items`.

    Attributes:
        name: ``ao audit NAME``.
        organism_task: the organism task it audits (``None``: the base model, no organism).
        open_question / choice_question: what the oracle is asked (open answer / forced choice).
        probe: whether a linear probe applies (the truth varies across items, so labels exist).
        logit_lens: whether the candidates can be ranked by the logit lens (single-word candidates).
        token_position: the single position read in ``token`` mode (-1: the last token of the prompt).
        secret_option: the organism option an external organism's secret fills (taboo: ``"word"``;
            ``None``: the audit takes no external organism).
    """

    name: str = ""
    summary: str = ""
    organism_task: str | None = None
    open_question: str = ""
    choice_question: str = ""
    probe: bool = True
    logit_lens: bool = True
    token_position: int = -1
    secret_option: str | None = None

    def secret_options(self, secret: str) -> dict[str, Any]:
        """The organism options of an organism made elsewhere that holds ``secret`` (``--secret``).

        The default puts ``secret`` under :attr:`secret_option` and lets the organism task validate it
        (e.g. gender: ``"Female"`` -> ``{"gender": "female"}``).

        Args:
            secret: what the organism is known to hide, in this audit's terms.

        Returns:
            The options its items are built from, as an organism card's ``options`` would hold them.

        Raises:
            ConfigError: the audit reads no organism, or takes no external one.
            OrganismError: the secret is not valid for the organism task.
        """
        if self.organism_task is None or self.secret_option is None:
            raise ConfigError(f"audit {self.name!r} takes no external organism (--organism-adapter/--secret): "
                              + ("it reads the base model itself." if self.organism_task is None else
                                 "its items depend on how the organism was built; build one with `ao organism "
                                 f"build {self.organism_task}`."))
        if not isinstance(secret, str) or not secret.strip():
            raise ConfigError(f"secret={secret!r}; the {self.name!r} audit needs the organism's "
                              f"{self.secret_option} (--secret VALUE).")
        from .organism import get_organism_task

        return get_organism_task(self.organism_task).parse_options({self.secret_option: secret.strip()})

    def default_targets(self) -> list[dict[str, Any]]:
        """Options of the organisms the suite builds for this audit (one dict per organism)."""
        return [{}]

    def items(self, targets: Mapping[str, Any], *, data_dir: Path | None, rng: Random, limit: int | None
              ) -> list[AuditItem]:
        """The audit's items for ``targets`` (organism key -> :class:`Organism`, or ``""`` -> the base model).

        ``limit`` caps the *test* items per target (val items are extra); ``rng`` makes any sampling
        reproducible from the audit's seed.
        """
        raise NotImplementedError

    def score_open(self, answer: str, item: AuditItem) -> bool:
        """Whether a free-text answer (oracle or black-box) reveals ``item.truth``."""
        return contains_word(answer, item.truth)

    def blackbox(self, item: AuditItem) -> list[BlackBoxQuery]:
        """Black-box attempts on the target for this item (scored with :meth:`score_open` on the reply)."""
        return []

    def chance(self, items: Sequence[AuditItem]) -> dict[str, float]:
        """Chance level per kind: forced choice = mean 1/len(candidates); open answers: 0 unless overridden."""
        test = [i for i in items if i.split == "test"] or list(items)
        choice = sum(1 / len(i.candidates) for i in test) / max(1, len(test))
        return {"choice": choice, "open": 0.0}


def contains_word(text: str, word: str) -> bool:
    """Whether ``word`` appears in ``text`` as a whole word (case-insensitive)."""
    return re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", text.lower()) is not None


_AUDITS: dict[str, AuditTask] = {}


def register_audit_task(task: AuditTask) -> AuditTask:
    """Add an audit to the registry shared by ``ao audit`` and :func:`run_audit`."""
    _AUDITS[task.name] = task
    return task


def audit_tasks() -> dict[str, AuditTask]:
    """Every registered audit by name (the built-in ones are registered on first use)."""
    from . import registry  # noqa: F401  (imports the built-in task modules, which register themselves)

    return dict(_AUDITS)


def get_audit_task(name: str) -> AuditTask:
    tasks = audit_tasks()
    if name not in tasks:
        raise UnknownTaskError(f"unknown audit {name!r}; known audits are: {', '.join(sorted(tasks))} "
                               "(and 'suite', which runs them all).")
    return tasks[name]
