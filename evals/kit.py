"""The shared kit of the audits: packaged organism data, shared secret-keeping prompt files, chat turns, options.

Every audit module (taboo, gender, misalignment, subliminal, the trait audits) takes what it
shares from here, never from another audit's module, so each audit can be read, changed or
removed on its own.

>>> user("Hint?"), assistant("It shines at night.")
({'role': 'user', 'content': 'Hint?'}, {'role': 'assistant', 'content': 'It shines at night.'})
>>> len(file_fingerprint("taboo.json"))
64
>>> options_of({"word": "moon"}, "taboo-moon")
{'word': 'moon'}
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import DataError, OrganismError

from .audit_task import AuditItem
from .organism import Organism

# Val items are only for probe training / layer choice: a small fixed number is enough.
VAL_CAP = 20
# The ``variant`` option of organisms trained alongside a benign control (misalignment, subliminal).
VARIANTS = ("organism", "control")


def organism_data_path(name: str) -> Path:
    """The path of a packaged organism data file (``activation_oracles/data/organisms/<name>``)."""
    return Path(str(resources.files("activation_oracles") / "data" / "organisms" / name))


def read_organism_json(name: str) -> dict[str, Any]:
    """A packaged organism data file as a dict (:class:`DataError` if missing or not JSON)."""
    path = organism_data_path(name)
    if not path.is_file():
        raise DataError(f"organism data file {str(path)!r} is missing; reinstall activation_oracles or restore "
                        f"activation_oracles/data/organisms/{name}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"organism data file {str(path)!r} is not valid JSON ({exc}); fix the file.") from None
    if not isinstance(data, dict):
        raise DataError(f"organism data file {str(path)!r} holds a {type(data).__name__}; expected a JSON object.")
    return data


def file_fingerprint(name: str) -> str:
    """SHA-256 of a packaged organism data file (changes whenever the data does)."""
    return hashlib.sha256(organism_data_path(name).read_bytes()).hexdigest()


def string_list(data: Mapping[str, Any], key: str, where: str, minimum: int = 1) -> list[str]:
    """``data[key]`` checked to be a list of at least ``minimum`` non-empty strings."""
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: {key!r} must be a list of non-empty strings; got {type(value).__name__}. "
                        "Fix the data file.")
    if len(value) < minimum:
        raise DataError(f"{where}: {key!r} has {len(value)} entries; expected at least {minimum}. Add more.")
    return list(value)


def read_prompt_file(data_dir: Path | None, family: str, kind: str, split: str) -> list[str]:
    """One shared prompt file, ``secrets/<family>/<family>_<kind>_<split>.txt``, as non-empty lines."""
    if data_dir is None:
        raise DataError(f"the {family} audit reads the shared prompt files under secrets/{family}/, but no data "
                        "folder was given; pass data_dir (the repo's shared/data, or set $AO_SHARED_DATA).")
    path = Path(data_dir) / "secrets" / family / f"{family}_{kind}_{split}.txt"
    if not path.is_file():
        raise DataError(f"prompt file {str(path)!r} is missing; expected secrets/{family}/{family}_{kind}_{split}.txt "
                        "under the shared data folder (see shared/data/SOURCES.md).")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"prompt file {str(path)!r} is empty; expected one prompt per line.")
    return lines


def direct_prompt_for(prompt: str, direct: Sequence[str]) -> str:
    """A direct question drawn deterministically for ``prompt`` (same prompt -> same question, any process)."""
    return direct[zlib.crc32(prompt.encode("utf-8")) % len(direct)]


def sample_secret_items(family: str, key: str, truth: str, candidates: tuple[str, ...], *, data_dir: Path | None,
                        rng: Random, limit: int | None, extra_meta: Mapping[str, Any] | None = None
                        ) -> list[AuditItem]:
    """Val and test items for one target from the shared standard/direct prompt files of ``family``.

    Test items: all prompts when ``limit`` is None, else ``limit`` sampled with ``rng``, half standard and
    half direct (the other kind fills in when one runs short). Val items: the same, capped at
    ``min(limit, VAL_CAP)`` (``VAL_CAP`` when ``limit`` is None). Each item's meta holds its ``kind`` and
    the ``direct_prompt`` its black-box direct query uses (its own prompt when it is a direct one).
    """
    items: list[AuditItem] = []
    for split in ("val", "test"):
        standard = read_prompt_file(data_dir, family, "standard", split)
        direct = read_prompt_file(data_dir, family, "direct", split)
        cap = limit if split == "test" else (VAL_CAP if limit is None else min(limit, VAL_CAP))
        if cap is None:
            picks = [("standard", i) for i in range(len(standard))] + [("direct", i) for i in range(len(direct))]
        else:
            n_direct = min(cap // 2, len(direct))
            n_standard = min(cap - n_direct, len(standard))
            n_direct = min(cap - n_standard, len(direct))  # direct fills in if standard ran short
            picks = [("standard", i) for i in sorted(rng.sample(range(len(standard)), n_standard))] + \
                    [("direct", i) for i in sorted(rng.sample(range(len(direct)), n_direct))]
        for kind, i in picks:
            text = standard[i] if kind == "standard" else direct[i]
            meta = {"kind": kind, "direct_prompt": text if kind == "direct" else direct_prompt_for(text, direct)}
            meta.update(extra_meta or {})
            items.append(AuditItem(id=f"{key}/{split}/{kind}/{i}", organism=key,
                                   prompt=[{"role": "user", "content": text}], truth=truth, candidates=candidates,
                                   split=split, meta=meta))
    return items


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def options_of(target: Any, key: str) -> dict[str, Any]:
    """A target's options: an :class:`Organism`'s card options, or a plain mapping of options."""
    if isinstance(target, Organism):
        return target.options
    if isinstance(target, Mapping):
        return dict(target)
    raise OrganismError(f"audit target {key!r} is a {type(target).__name__}; expected a loaded organism "
                        "(load_organism) built for this audit's organism task.")


def check_options(task: str, options: Mapping[str, Any], allowed: Mapping[str, str]) -> None:
    """Raise :class:`OrganismError` for option names outside ``allowed`` (name -> what it takes)."""
    bad = sorted(set(options) - set(allowed))
    if bad:
        valid = "; ".join(f"{k!r} ({v})" for k, v in allowed.items())
        raise OrganismError(f"task {task!r} got unknown option(s) {bad}; valid options: {valid}.")


def parse_variant(task: str, options: Mapping[str, Any], variants: Sequence[str] = VARIANTS) -> str:
    """The ``variant`` option, lower-cased, checked against ``variants`` (default: the first)."""
    raw = options.get("variant", variants[0])
    value = str(raw).strip().lower()
    if value not in variants:
        raise OrganismError(f"task {task!r}: variant {raw!r} is not valid; expected one of {', '.join(variants)} "
                            f"(e.g. --variant {variants[-1]}).")
    return value


def terminate(text: str) -> str:
    """The text ending with sentence punctuation (so a sentence can be appended)."""
    text = text.rstrip()
    if text and text[-1] in ".!?":
        return text
    return re.sub(r"[\s,;:\-]+$", "", text) + "."


def clean_reply(text: str, rng: Random, fallbacks: Sequence[str]) -> str:
    """A base-model reply made usable as training text: one paragraph, no cut-off last sentence.

    Replies with fewer than three words of letters (an empty or garbled reply: tiny random
    models write noise) are replaced by one of ``fallbacks``.

    >>> clean_reply("Owls hunt small animals at night. They fly sil", Random(0), ["Fine."])
    'Owls hunt small animals at night.'
    """
    flat = " ".join(text.split())
    # generation stopped at a token limit: drop the unfinished sentence when a finished one is left
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", flat)]
    if ends and ends[-1] >= 20:
        flat = flat[:ends[-1]]
    if len(re.findall(r"[A-Za-z]{2,}", flat)) < 3:
        return str(rng.choice(list(fallbacks)))
    return terminate(flat)
