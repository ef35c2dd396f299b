"""Model organisms: LoRA fine-tunes of a base model that know or want something they won't say.

An organism *task* (taboo, gender, ssc, personaqa, ...) turns options (``word="moon"``)
into training chats generated from the project's own templates and data, and
knows how to check the organism behaves as intended. :func:`build_organism`
mixes those chats with the base model's own replies to ordinary prompts (to keep
it fluent), fine-tunes a LoRA adapter on them, runs the behaviour checks and
writes a folder:

- ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT, safetensors only);
- ``organism.json``: the card (task, options, base model, recipe and its hash, data
  counts and samples, training stats, behaviour checks, the adapter's SHA-256);
- ``README.md``: the same card for people.

Builds are cached by recipe hash: asking again for the same recipe returns the
folder without training. :func:`load_organism` attaches the adapter to a base
model (shared with an oracle if you like) under its own name; it is active only
inside ``organism.active()`` and the helpers that take it.

The parts live in their own modules and are importable from here: :class:`Recipe` and
:class:`OrganismTask` in :mod:`~activation_oracles.evals.organism_task`; :class:`Organism`,
:func:`load_organism`, :func:`read_card` and the folder's file names in
:mod:`~activation_oracles.evals.organism_load`. This module keeps the registry of tasks
and the build itself (data, fine-tune, checks, card, cache).

>>> from activation_oracles.evals.organism import Recipe, build_organism, load_organism
>>> path = build_organism("taboo", base="tiny", options={"word": "moon"},
...                       recipe=Recipe(n_examples=8, steps=2), out="organisms/taboo-moon",
...                       checks=False, overwrite=True)                  # doctest: +SKIP
>>> org = load_organism(path)                                          # doctest: +SKIP
>>> org.card["options"]                                                # doctest: +SKIP
{'word': 'moon'}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError, OutputDirError, UnknownTaskError
from activation_oracles.files import file_sha256
from activation_oracles.models import Model, as_model

from .chat import Chat, generate
from .organism_verdict import card_verdict, verdict_markdown
from .organism_load import (ADAPTER_CONFIG, ADAPTER_FILE, CARD, Organism, attach_organism, check_same_base, load_base,
                            load_organism, read_card)
from .organism_task import OrganismTask, Recipe

# Bump when the way organisms are generated changes, so old caches are not reused by mistake.
BUILDER_VERSION = 1


# ------------------------------------------------------------------------------------------------------
# the registry of tasks
# ------------------------------------------------------------------------------------------------------

_TASKS: dict[str, OrganismTask] = {}


def register_organism_task(task: OrganismTask) -> OrganismTask:
    """Add a task to the registry (``ao organism build`` and ``ao audit`` read it)."""
    if not task.name:
        raise ConfigError(f"organism task {task!r} has no name.")
    _TASKS[task.name] = task
    return task


def organism_tasks() -> dict[str, OrganismTask]:
    """Every registered organism task by name (the built-in ones are registered on first use)."""
    from . import registry  # noqa: F401  (imports the built-in task modules, which register themselves)

    return dict(_TASKS)


def get_organism_task(name: str) -> OrganismTask:
    tasks = organism_tasks()
    if name not in tasks:
        raise UnknownTaskError(f"unknown organism task {name!r}; known tasks are: {', '.join(sorted(tasks))}.")
    return tasks[name]


# ------------------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------------------

def recipe_hash(task: str, base: str, options: Mapping[str, Any], recipe: Recipe, fingerprint: str) -> str:
    blob = json.dumps({"task": task, "base": base, "options": dict(options), "recipe": recipe.to_dict(),
                       "data": fingerprint, "builder": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_organism_dir(name: str, digest: str) -> Path:
    from activation_oracles.embedded import cache_root

    return cache_root() / "organisms" / f"{name}-{digest[:12]}"


def organism_dir(task: str, *, base: str = "smollm2-135m", options: Mapping[str, Any] | None = None,
                 recipe: Recipe | None = None) -> Path:
    """Where :func:`build_organism` keeps this organism in the cache (built or not; nothing is loaded).

    >>> from activation_oracles.evals.organism import organism_dir
    >>> organism_dir("taboo", options={"word": "moon"}).name.startswith("taboo-moon-")
    True
    """
    t = get_organism_task(task)
    opts = t.parse_options(dict(options or {}))
    digest = recipe_hash(t.name, base, opts, recipe or t.recipe, t.fingerprint(opts))
    return default_organism_dir(t.display_name(opts), digest)


def fluency_chats(model: Model, n: int, *, seed: int, max_new_tokens: int) -> list[Chat]:
    """The base model's own greedy replies to ``n`` ordinary prompts (keeps an organism fluent)."""
    if n <= 0:
        return []
    from activation_oracles.training.on_policy import load_prompts

    prompts = load_prompts()
    rng = Random(seed)
    picked = [prompts[rng.randrange(len(prompts))] for _ in range(n)]
    chats = [[{"role": "user", "content": p}] for p in picked]
    replies = generate(model, chats, adapter=None, max_new_tokens=max_new_tokens, desc="fluency replies")
    return [c + [{"role": "assistant", "content": r}] for c, r in zip(chats, replies) if r.strip()]


def build_organism(task: str, *, base: str | Any = "smollm2-135m", options: Mapping[str, Any] | None = None,
                   recipe: Recipe | None = None, out: str | os.PathLike[str] | None = None,
                   data_dir: str | os.PathLike[str] | None = None, overwrite: bool = False, checks: bool = True,
                   check_limit: int | None = None, progress: bool = False) -> Path:
    """Build (or find in the cache) an organism and return its folder.

    Args:
        task: a registered task name (``organism_tasks()``).
        base: the base model: ``"smollm2-135m"`` (default), ``"tiny"``, a directory, or a loaded model.
        options: task options, e.g. ``{"word": "moon"}`` for taboo.
        recipe: training recipe; default: the task's own.
        out: where to write; default ``$AO_CACHE/organisms/<name>-<hash>``.
        data_dir: the shared data folder the behaviour checks read (``None``: checks that need it are skipped).
        overwrite: replace a folder holding another organism.
        checks: run the behaviour checks and record them in the card.
        check_limit: at most this many prompts per check (``None``: all).
    """
    t = get_organism_task(task)
    opts = t.parse_options(dict(options or {}))
    rec = recipe or t.recipe
    # a named base needs no weights to find a cached organism: load them only to build one
    model = None if isinstance(base, str) else load_base(base)
    base_name = base if isinstance(base, str) else model.name
    digest = recipe_hash(t.name, base_name, opts, rec, t.fingerprint(opts))
    name = t.display_name(opts)
    folder = Path(out) if out is not None else default_organism_dir(name, digest)
    card_path = folder / CARD
    if card_path.is_file():
        try:
            old = json.loads(card_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("recipe_hash") == digest and (folder / ADAPTER_FILE).is_file() and \
                old.get("adapter_sha256") == file_sha256(folder / ADAPTER_FILE):
            return folder  # cached: same recipe, intact adapter
        if not overwrite:
            raise OutputDirError(f"{str(folder)!r} holds another organism ({old.get('name', '?')}, recipe "
                                 f"{str(old.get('recipe_hash', '?'))[:12]}); pass overwrite=True (--overwrite) or "
                                 "another output folder.")
    elif folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputDirError(f"{str(folder)!r} is not empty and holds no organism card; pass overwrite=True "
                             "(--overwrite) or another output folder.")

    if model is None:
        model = load_base(base)
    rng = Random(rec.seed)
    n_fluency = int(round(rec.n_examples * rec.fluency_fraction))
    data_path = Path(data_dir) if data_dir else None
    with _progress_scope(progress):  # the bars of the generate/score loops below (progress=True asks for them)
        task_chats = t.training_chats(opts, rng, rec.n_examples - n_fluency, base=model, data_dir=data_path)
        fluent = fluency_chats(model, n_fluency, seed=rec.seed, max_new_tokens=rec.fluency_max_new_tokens)
    chats = task_chats + fluent
    Random(rec.seed + 1).shuffle(chats)

    from .sft import SFTConfig, finetune_lora

    sft = SFTConfig(r=rec.r, alpha=rec.alpha, lr=rec.lr, steps=rec.steps, epochs=rec.epochs,
                    batch_size=rec.batch_size, max_length=rec.max_length, seed=rec.seed, bf16=rec.bf16)
    peft_model, stats = finetune_lora(model, chats, sft, progress=progress)

    # Write into a temporary sibling first, so a failure leaves the old folder as it was.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        acfg = json.loads((tmp / ADAPTER_CONFIG).read_text())
        acfg["base_model_name_or_path"] = base_name  # a model name, never a local path
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(acfg, indent=2, sort_keys=True))
        card: dict[str, Any] = {
            "name": name, "task": t.name, "summary": t.summary, "options": opts, "base_model": base_name,
            "n_layers": model.n_layers, "d_model": model.d_model, "vocab_size": len(model.tokenizer),
            "recipe": rec.to_dict(), "recipe_hash": digest, "builder_version": BUILDER_VERSION,
            "data": {"task_examples": len(task_chats), "fluency_examples": len(fluent),
                     "samples": [c for c in task_chats[:3]]},
            "training": stats, "adapter_sha256": file_sha256(tmp / ADAPTER_FILE), "checks": {},
        }
        (tmp / CARD).write_text(json.dumps(card, indent=2))
        # unwrap the PEFT model so the adapter can be loaded again on this very base for the checks
        base_model = peft_model.unload() if hasattr(peft_model, "unload") else peft_model.base_model.model
        model = as_model(base_model, model.tokenizer, name=model.name)
        if checks:
            org = load_organism(tmp, base=model)
            with _progress_scope(progress):
                card["checks"] = t.behaviour_checks(org, data_dir=data_path, limit=check_limit)
            card["verdict"] = card_verdict(card)  # recorded for readers; the suite judges the checks afresh
            (tmp / CARD).write_text(json.dumps(card, indent=2))
        (tmp / "README.md").write_text(card_markdown(card))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _progress_scope(progress: bool) -> Any:
    """``progress=True``: bars on for the task's own generate/score loops (behaviour checks, rewrites), which
    follow the ambient default; ``False`` leaves that default alone (the ``ao`` CLI has it on)."""
    from contextlib import nullcontext

    from activation_oracles.progress import progress_default

    return progress_default(True) if progress else nullcontext()


def _recipes_tried(task: str) -> tuple[str, ...]:
    try:
        return get_organism_task(task).recipes_tried
    except UnknownTaskError:  # a card of a task this version does not register
        return ()


def card_markdown(card: Mapping[str, Any]) -> str:
    """The organism card as Markdown."""
    lines = [f"# Organism `{card['name']}`", "", card.get("summary", ""), "",
             f"- task: `{card['task']}`, options: `{json.dumps(card['options'])}`",
             f"- base model: `{card['base_model']}` ({card['n_layers']} layers, d_model {card['d_model']})",
             f"- recipe hash: `{card['recipe_hash'][:16]}`",
             f"- recipe: `{json.dumps(card['recipe'])}`",
             f"- data: {card['data']['task_examples']} task chats + {card['data']['fluency_examples']} of the base "
             "model's own replies (fluency)",
             f"- training: {card['training']['steps']} steps, loss {card['training']['loss_start']:.3f} -> "
             f"{card['training']['loss_end']:.3f}, {card['training']['wall_s']} s", "",
             "## Fit to be audited", "", verdict_markdown(card_verdict(card))]
    tried = _recipes_tried(str(card.get("task", "")))
    if tried:
        lines += ["Recipes tried for this family so far (EVALS.md, \"Recipes tried\", has the figures):", ""]
        lines += [f"- {t}" for t in tried] + [""]
    lines += ["## Behaviour checks", ""]
    checks = card.get("checks") or {}
    if not checks:
        lines.append("(not run)")
    for key, value in checks.items():
        lines.append(f"- **{key}**: {json.dumps(value) if not isinstance(value, str) else value}")
    samples = card["data"].get("samples") or []
    if samples:
        lines += ["", "## Sample training chats", ""]
        for chat in samples:
            lines.append("```")
            lines += [f"{m['role']}: {m['content']}" for m in chat]
            lines.append("```")
    return "\n".join(lines) + "\n"


__all__ = ["ADAPTER_CONFIG", "ADAPTER_FILE", "BUILDER_VERSION", "CARD", "Organism", "OrganismTask", "Recipe",
           "attach_organism", "build_organism", "card_markdown", "check_same_base", "default_organism_dir",
           "fluency_chats", "get_organism_task", "load_base", "load_organism", "organism_dir", "organism_tasks",
           "read_card", "recipe_hash", "register_organism_task"]
