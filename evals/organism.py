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
import re
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import BaseMismatchError, ConfigError, OrganismError, OutputDirError, UnknownTaskError
from activation_oracles.files import file_sha256
from activation_oracles.models import Model, as_model

from .chat import Chat, answer_logprobs, generate, running

CARD = "organism.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Bump when the way organisms are generated changes, so old caches are not reused by mistake.
BUILDER_VERSION = 1


# ------------------------------------------------------------------------------------------------------
# recipes and tasks
# ------------------------------------------------------------------------------------------------------

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
    """

    name: str = ""
    summary: str = ""
    recipe: Recipe = Recipe()
    option_help: dict[str, str] = {}

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

    def display_name(self, options: Mapping[str, Any]) -> str:
        """A short name for the organism, e.g. ``taboo-moon``."""
        parts = [self.name] + [str(v) for _, v in sorted(options.items())]
        return "-".join(p.replace(" ", "_") for p in parts)


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

def load_base(spec: str | Any, *, dtype: Any = None, device: Any = None) -> Model:
    """``"tiny"`` (a tiny random Llama, seed 0), a model spec for ``ao.load_model``, or a loaded model."""
    if not isinstance(spec, str):
        return as_model(spec)
    if spec in ("tiny", "tiny-llama"):  # the spec, or the name the tiny model reports
        from activation_oracles.tiny import tiny_model

        return tiny_model()
    from activation_oracles.models import load_model

    return load_model(spec, dtype=dtype or "fp32", device=device)


def recipe_hash(task: str, base: str, options: Mapping[str, Any], recipe: Recipe, fingerprint: str) -> str:
    blob = json.dumps({"task": task, "base": base, "options": dict(options), "recipe": recipe.to_dict(),
                       "data": fingerprint, "builder": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_organism_dir(name: str, digest: str) -> Path:
    from activation_oracles.embedded import cache_root

    return cache_root() / "organisms" / f"{name}-{digest[:12]}"


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
             f"{card['training']['loss_end']:.3f}, {card['training']['wall_s']} s", "", "## Behaviour checks", ""]
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


# ------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------

@dataclass
class Organism:
    """An organism's adapter attached to a base model under ``adapter`` (inactive outside its helpers)."""

    model: Model
    adapter: str
    card: dict[str, Any]
    path: Path
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.card.get("options") or {})

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the block as the organism (its adapter on, every other adapter off)."""
        with running(self.model, self.adapter):
            yield

    def generate(self, chats: Sequence[Chat], **kwargs: Any) -> list[str]:
        """Greedy replies of the organism (see :func:`activation_oracles.evals.chat.generate`)."""
        return generate(self.model, chats, adapter=self.adapter, **kwargs)

    def answer_logprobs(self, chats: Sequence[Chat], answers: Sequence[str], **kwargs: Any) -> list[float]:
        return answer_logprobs(self.model, chats, answers, adapter=self.adapter, **kwargs)

    def capture(self, chats: Sequence[Chat], *, layers: Sequence[int], batch_size: int = 16) -> list[Any]:
        """The organism's residual activations for each chat (generation prompt appended)."""
        from activation_oracles.capturing import capture

        if not chats:
            return []
        with self.active():
            return list(capture(self.model, list(chats), layers=list(layers), batch_size=batch_size))


def _canonical(name: str) -> str:
    """A base model's spec and its loaded name are the same model ("tiny" is built as "tiny-llama")."""
    from activation_oracles.tiny import TINY_NAME

    return TINY_NAME if name == "tiny" else name


def check_same_base(a: Mapping[str, Any], b: Mapping[str, Any], what: str) -> None:
    """Raise :class:`BaseMismatchError` unless two descriptions (base_model, n_layers, d_model) agree."""
    keys = ("n_layers", "d_model")
    diffs = [k for k in keys if a.get(k) and b.get(k) and a.get(k) != b.get(k)]
    if a.get("base_model") and b.get("base_model") and _canonical(a["base_model"]) != _canonical(b["base_model"]):
        diffs.insert(0, "base_model")
    if diffs:
        desc = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diffs)
        raise BaseMismatchError(f"{what} are built on different base models ({desc}); build the organism on the "
                                "oracle's base model (ao organism build ... --base NAME).")


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An organism folder's card, checked against its adapter (missing card or a different adapter raise)."""
    folder = Path(path)
    if not folder.is_dir():
        raise OrganismError(f"organism {str(folder)!r} is not a folder; pass the folder written by "
                            "`ao organism build`.")
    for name in (CARD, ADAPTER_CONFIG, ADAPTER_FILE):
        if not (folder / name).is_file():
            raise OrganismError(f"organism folder {str(folder)!r} lacks {name}; an organism folder holds {CARD}, "
                                f"{ADAPTER_CONFIG} and {ADAPTER_FILE}. Rebuild it with `ao organism build`.")
    try:
        card = json.loads((folder / CARD).read_text())
    except json.JSONDecodeError as exc:
        raise OrganismError(f"{str(folder / CARD)!r} is not valid JSON ({exc}); rebuild the organism.") from None
    missing = [k for k in ("name", "task", "options", "base_model", "adapter_sha256") if k not in card]
    if missing:
        raise OrganismError(f"{str(folder / CARD)!r} lacks {missing}; rebuild the organism.")
    actual = file_sha256(folder / ADAPTER_FILE)
    if actual != card["adapter_sha256"]:
        raise OrganismError(f"the adapter in {str(folder)!r} does not match its card (sha256 {actual[:12]} vs "
                            f"{str(card['adapter_sha256'])[:12]} recorded); the adapter was replaced or damaged. "
                            "Rebuild the organism (ao organism build ... --overwrite).")
    return card


def load_organism(path: str | os.PathLike[str], *, base: Any = None) -> Organism:
    """Attach an organism's adapter to ``base`` (default: its own base model, loaded here).

    The adapter gets the name ``organism_<name>`` and is parked (off) outside the
    organism's helpers, so the base keeps acting as the base model.
    """
    from activation_oracles.adapter_checks import check_adapter_fits, read_adapter_index
    from activation_oracles.adapters import adapter_names, park_adapters
    from activation_oracles.loading import attach_adapter

    folder = Path(path)
    card = read_card(folder)
    model = load_base(card["base_model"]) if base is None else as_model(base)
    check_same_base(card, {"base_model": None, "n_layers": model.n_layers, "d_model": model.d_model},
                    f"organism {card['name']!r} and the base model given")
    index = read_adapter_index(folder)  # config and tensor index checked, before the model is touched
    check_adapter_fits(index, model.hf, model.name)
    adapter = "organism_" + re.sub(r"\W", "_", str(card["name"]))  # module-dict keys take no dots
    if adapter in adapter_names(model.hf):
        return Organism(model=model, adapter=adapter, card=card, path=folder)
    attach_adapter(model, folder, adapter, index=index)  # all or nothing
    park_adapters(model.hf)
    return Organism(model=model, adapter=adapter, card=card, path=folder)


def attach_organism(spec: str | os.PathLike[str] | Organism, model: Model, *, base_name: str | None,
                    what: str) -> Organism:
    """``spec`` as is when already loaded; else the folder's card checked against ``base_name`` and
    ``model``'s shape (``what`` names the other side in the error), and its adapter attached to ``model``."""
    if isinstance(spec, Organism):
        return spec
    card = read_card(spec)
    check_same_base(card, {"base_model": base_name, "n_layers": model.n_layers, "d_model": model.d_model},
                    f"organism {card['name']!r} and {what}")
    return load_organism(spec, base=model)
