"""The targets of an audit: organisms (or the bare base model) sharing the oracle's base weights.

:func:`load_targets` turns ``run_audit``'s ``targets`` (organism folders, loaded organisms,
external LoRAs; default: the task's default organisms, built or found in the cache)
into organisms attached to the oracle's model, checked to be the audit's kind;
:class:`Targets` captures each item's activations under its own target. A module of its own
because both the methods (:mod:`~activation_oracles.evals.audit_methods`) and the run
(:mod:`~activation_oracles.evals.audit`) use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from activation_oracles.errors import ConfigError, OrganismError

from .audit_task import AuditItem, AuditTask
from .organism import Organism, attach_organism, build_organism


class Targets:
    """Organisms (or the bare base, key ``""``) sharing the oracle's base weights."""

    def __init__(self, organisms: Mapping[str, Any], base: Any) -> None:
        self.organisms = dict(organisms)
        self.base = base

    def adapter(self, key: str) -> str | None:
        org = self.organisms.get(key)
        return org.adapter if isinstance(org, Organism) else None

    def capture(self, items: Sequence[AuditItem], layers: Sequence[int], batch_size: int) -> list[Any]:
        """Activations of every item's prompt under its own target, in item order."""
        from activation_oracles.capturing import capture

        from .chat import running

        out: list[Any] = [None] * len(items)
        by_target: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_target.setdefault(it.organism, []).append(i)
        for key, idx in by_target.items():
            # chats go through the chat template with the assistant header open; plain strings
            # (classification texts) are read as the text's own tokens, as the trainer reads them
            for is_chat in (True, False):
                sub = [i for i in idx if isinstance(items[i].prompt, str) != is_chat]
                if not sub:
                    continue
                with running(self.base, self.adapter(key)):
                    acts = capture(self.base, [items[i].prompt for i in sub], layers=list(layers),
                                   batch_size=batch_size, chat=is_chat)
                for i, a in zip(sub, acts if isinstance(acts, list) else [acts]):
                    out[i] = a
        return out


def load_targets(task: AuditTask, targets: Sequence[Any] | None, oracle: Any, base_spec: str,
                 data_dir: Path | None, progress: bool) -> dict[str, Any]:
    """The audit's targets by name, attached to ``oracle``'s model (``{"": model}`` when the task reads the base)."""
    if task.organism_task is None:
        if targets:
            raise ConfigError(f"audit {task.name!r} reads the base model itself and takes no --target; got {targets}.")
        return {"": oracle.model}
    specs: list[Any] = list(targets) if targets else [
        build_organism(task.organism_task, base=base_spec, options=opts, data_dir=data_dir, progress=progress)
        for opts in task.default_targets()]
    from .external import ExternalOrganism, load_external_organism

    out: dict[str, Any] = {}
    for spec in specs:
        if isinstance(spec, ExternalOrganism):  # a LoRA made elsewhere plus its secret: no card to read
            org = load_external_organism(spec, task, oracle.model)
        else:
            org = attach_organism(spec, oracle.model, base_name=oracle.config.base_model, what="the oracle")
        if org.name in out:
            raise ConfigError(f"two targets of the {task.name!r} audit are both named {org.name!r}; audit them "
                              "separately, or name an external one (ExternalOrganism(..., name=...)).")
        if org.card.get("task") != task.organism_task:
            raise OrganismError(f"organism {org.name!r} is a {org.card.get('task')!r} organism; the {task.name!r} "
                                f"audit needs a {task.organism_task!r} one (ao organism build {task.organism_task}).")
        out[org.name] = org
    return out


__all__ = ["Targets", "load_targets"]
