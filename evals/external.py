"""Organisms from anywhere: audit a LoRA adapter made elsewhere, given the secret it is known to hold.

The audits normally build their own organisms (:mod:`.organism`), whose card records what they
hide. An organism published elsewhere, e.g. the paper's taboo or gender organisms, is a bare
PEFT adapter (``adapter_config.json`` + ``adapter_model.safetensors``, a folder or a hub repo)
with no card, so the audit is told its secret instead:

    ao audit taboo --organism-adapter path/to/taboo-ship-lora --secret ship --oracle ORACLE --out audits/t
    ao audit gender --organism-adapter org/gender-female-lora --secret female --oracle ORACLE --out audits/g

or in Python ``run_audit("taboo", targets=[ExternalOrganism("path/to/lora", secret="ship")], ...)``.

Each audit maps the secret onto its organism options (:meth:`AuditTask.secret_options`:
taboo's word, gender's gender, ssc's constraint names, ...). The adapter goes through the same
checks as every adapter here (safetensors only, plain LoRA, every module and shape checked
against the oracle's base model) before anything is attached; an adapter made for another base
is a :class:`~activation_oracles.errors.BaseMismatchError` and leaves the base untouched. A hub id
is fetched (JSON and safetensors files only) when online, and is an
:class:`~activation_oracles.errors.OfflineError` when offline and not cached.

>>> ExternalOrganism("organisms/taboo-ship", secret="ship").secret
'ship'
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from activation_oracles.errors import AdapterError, ArgumentTypeError, BaseMismatchError, ConfigError
from activation_oracles.files import file_sha256

from .organism import ADAPTER_FILE, Organism, get_organism_task

SOURCE = "external"
# (model, adapter name) of every external organism attached inside the innermost @detach_external_after call
_ATTACHED: ContextVar[list[tuple[Any, str]] | None] = ContextVar("ao_external_attached", default=None)


@dataclass(frozen=True)
class ExternalOrganism:
    """An organism given as a LoRA adapter (folder or hub id) plus the secret it holds.

    Attributes:
        adapter: a directory holding ``adapter_config.json`` and ``adapter_model.safetensors``, or a hub id
            ``org/name`` (fetched when online).
        secret: what the organism is known to hide, in the audit's terms: taboo's word, gender's
            ``male``/``female``, ssc's constraint names (see ``AuditTask.secret_options``).
        name: how the organism is named in the report (default: the task's name for those options,
            e.g. ``taboo-ship``).
    """

    adapter: str | os.PathLike[str]
    secret: str
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, (str, os.PathLike)):
            raise ArgumentTypeError(f"ExternalOrganism adapter={self.adapter!r} ({type(self.adapter).__name__}); "
                                    "expected a directory path or a hub id 'org/name'.")
        if not isinstance(self.secret, str) or not self.secret.strip():
            raise ConfigError(f"ExternalOrganism secret={self.secret!r}; expected the secret the organism holds, "
                              "e.g. secret='ship' for a taboo organism (--secret ship).")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ConfigError(f"ExternalOrganism name={self.name!r}; expected a non-empty string or None.")


def load_external_organism(spec: ExternalOrganism, task: Any, model: Any) -> Organism:
    """Check ``spec``'s adapter against ``model`` and attach it, as an :class:`Organism` for ``task``.

    Args:
        spec: the adapter and its secret.
        task: the :class:`~.audit_task.AuditTask` that will audit it (maps the secret to options).
        model: the oracle's base model (an ``ao.Model``); the adapter shares its weights.

    Returns:
        An :class:`Organism` whose synthesised card records ``source: "external"``, the adapter, the
        secret and the options; the adapter is parked (off) outside the organism's helpers.

    Raises:
        ConfigError / OrganismError: the audit takes no external organism, or the secret is not valid for it.
        OfflineError: a hub id that is not cached while offline.
        UnsafeFileError: pickle-only weights.
        AdapterError: a missing or damaged file, or an adapter that is not plain LoRA.
        BaseMismatchError: the adapter was made for another base (modules or shapes differ).
        In every case nothing is attached to ``model``.
    """
    from activation_oracles.adapter_checks import check_adapter_fits, read_adapter_index
    from activation_oracles.adapter_source import check_adapter_files, resolve_adapter_dir, warn_if_other_base
    from activation_oracles.adapters import adapter_names, park_adapters
    from activation_oracles.loading import attach_adapter

    options = task.secret_options(spec.secret)  # before any file is read: a bad secret is the cheapest error
    what = f"organism adapter {os.fspath(spec.adapter)!r}"
    folder = resolve_adapter_dir(spec.adapter, what="organism adapter")
    check_adapter_files(folder, what="organism adapter")
    index = read_adapter_index(folder)  # config and tensor index checked, before the model is touched
    declared = index.config.get("base_model_name_or_path")
    try:
        check_adapter_fits(index, model.hf, model.name)
    except AdapterError as exc:
        made_for = f" (its adapter_config.json names {declared!r})" if isinstance(declared, str) and declared else ""
        raise BaseMismatchError(
            f"{what}{made_for} does not fit the oracle's base model {model.name!r}: {exc} An organism and the "
            "oracle that audits it must share one base model: pass an oracle trained on the organism's base "
            "(--oracle DIR_OR_HUB_ID), or an organism adapter made on the oracle's base.") from None
    note = warn_if_other_base(declared, model.name, what=what)
    organism_task = get_organism_task(task.organism_task)
    name = spec.name.strip() if spec.name else organism_task.display_name(options)
    sha = file_sha256(folder / ADAPTER_FILE)
    # the hash in the name: a second audit in the same process reuses this very adapter, never another one
    adapter = "organism_ext_" + re.sub(r"\W", "_", name) + "_" + sha[:8]
    if adapter not in adapter_names(model.hf):
        attach_adapter(model, folder, adapter, index=index)  # all or nothing
        park_adapters(model.hf)
        scope = _ATTACHED.get()
        if scope is not None:  # inside run_audit: detached again when it returns
            scope.append((model.hf, adapter))
    card = {"name": name, "task": task.organism_task, "options": options, "secret": spec.secret.strip(),
            "source": SOURCE, "adapter": os.fspath(spec.adapter), "adapter_sha256": sha,
            "base_model": declared if isinstance(declared, str) and declared else model.name,
            "n_layers": model.n_layers, "d_model": model.d_model, "recipe_hash": None, "checks": {},
            "notes": [note] if note else []}
    return Organism(model=model, adapter=adapter, card=card, path=folder)


def unload_external_organism(organism: Organism) -> None:
    """Detach an external organism's adapter from its base model (``run_audit`` does this itself).

    Raises:
        AdapterError: ``organism`` is not an external organism, or its adapter is no longer loaded.
    """
    from activation_oracles.adapters import adapter_names
    from activation_oracles.loading import remove_adapter

    if not isinstance(organism, Organism) or organism.card.get("source") != SOURCE:
        raise AdapterError(f"{organism!r:.80} is not an external organism; pass one returned by "
                           "load_external_organism(...).")
    if organism.adapter not in adapter_names(organism.model.hf):
        raise AdapterError(f"adapter {organism.adapter!r} is not loaded on {organism.model.name!r} (already "
                           "unloaded?).")
    remove_adapter(organism.model.hf, organism.adapter)


def detach_external_after(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: every external organism attached during a call of ``fn`` is detached when it returns or
    raises, so an audit leaves a caller's oracle model with the adapters it had before."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from activation_oracles.adapters import adapter_names
        from activation_oracles.loading import remove_adapter

        attached: list[tuple[Any, str]] = []
        token = _ATTACHED.set(attached)
        try:
            return fn(*args, **kwargs)
        finally:
            _ATTACHED.reset(token)
            for hf, name in reversed(attached):
                if name in adapter_names(hf):
                    remove_adapter(hf, name)

    return wrapper


def parse_cli_pairs(adapters: list[str] | None, secrets: list[str] | None) -> list[ExternalOrganism]:
    """``--organism-adapter`` and ``--secret`` values paired in order (one secret per adapter).

    Raises:
        ConfigError: the counts differ, or a secret is given without an adapter.
    """
    adapters, secrets = list(adapters or []), list(secrets or [])
    if len(adapters) != len(secrets):
        raise ConfigError(f"got {len(adapters)} --organism-adapter and {len(secrets)} --secret; give one --secret "
                          "after each --organism-adapter, e.g. --organism-adapter DIR --secret ship.")
    return [ExternalOrganism(a, secret=s) for a, s in zip(adapters, secrets)]


__all__ = ["ExternalOrganism", "detach_external_after", "load_external_organism", "parse_cli_pairs",
           "unload_external_organism"]
