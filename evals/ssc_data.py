"""The SSC data: the shipped ``ssc.json`` (code words, constraints, templates), validated, and the shared prompt files.

:func:`load_ssc` reads and checks the data file once per path (unique code words that no
prompt uses; each constraint's text named by its own keywords only; refusals that name
none); :func:`shared_prompts` reads ``secrets/ssc/ssc_{kind}_{split}.txt`` from the shared
data folder for the behaviour checks and the audit. :mod:`~activation_oracles.evals.ssc`
re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from activation_oracles.errors import DataError

from .ssc_rules import RULES, Constraint, mentions_any, names_constraint

DATA_FILE = "ssc.json"


def data_path() -> Path:
    """The shipped ``ssc.json`` (installed package data first, then the source tree)."""
    from activation_oracles.files import package_data

    return package_data("organisms", DATA_FILE)


@lru_cache(maxsize=8)
def _load(path: str) -> tuple[dict[str, Any], dict[str, Constraint]]:
    from activation_oracles.training.sources import read_json

    data = read_json(path, "SSC data file")
    where = f"SSC data file {path!r}"
    need = {"format": str, "constraints": dict, "colours": list, "animals": list, "colour_sentences": list,
            "animal_sentences": list, "number_sentences": list, "closing_questions": list,
            "padding_sentences": list, "fallback_replies": list, "refusals": list, "direct_questions": list,
            "prompts": list}
    for key, kind in need.items():
        if not isinstance(data.get(key), kind) or not data[key]:
            raise DataError(f"{where}: key {key!r} is missing, empty or not a {kind.__name__}; see the shipped "
                            f"{DATA_FILE} for the expected layout.")
    if "{prompt}" not in data["format"] or "{code}" not in data["format"]:
        raise DataError(f"{where}: 'format' is {data['format']!r}; it must contain {{prompt}} and {{code}}.")
    constraints: dict[str, Constraint] = {}
    for name, spec in data["constraints"].items():
        missing = [k for k in ("code", "text", "rule", "keywords") if not spec.get(k)]
        if missing:
            raise DataError(f"{where}: constraint {name!r} lacks {missing}; each constraint needs code, text, rule "
                            "and keywords.")
        if spec["rule"] not in RULES:
            raise DataError(f"{where}: constraint {name!r} has rule {spec['rule']!r}; known rules are "
                            f"{', '.join(sorted(RULES))}.")
        # the word lists are shared by the rules that need them; a constraint's own params win
        params = {"colours": data["colours"], "animals": data["animals"] + data.get("animal_irregular_plurals", []),
                  **(spec.get("params") or {})}
        constraints[name] = Constraint(name=name, code=str(spec["code"]), text=str(spec["text"]),
                                       rule=str(spec["rule"]), keywords=tuple(spec["keywords"]), params=params)
    _validate(where, data, constraints)
    return data, constraints


def _validate(where: str, data: Mapping[str, Any], constraints: Mapping[str, Constraint]) -> None:
    """The invariants the organism and the audit rely on, checked once when the file is read."""
    codes = [c.code for c in constraints.values()]
    if len(set(codes)) != len(codes):
        raise DataError(f"{where}: code words {codes} are not unique; give each constraint its own code word.")
    texts = list(data["prompts"]) + list(data["direct_questions"])
    for c in constraints.values():
        # the code word must never occur in ordinary text, or it would trigger the constraint by accident
        hit = next((t for t in texts if mentions_any(t, [c.code])), None)
        if hit is not None:
            raise DataError(f"{where}: code word {c.code!r} of {c.name!r} occurs in the prompt {hit!r}; pick a code "
                            "word that no prompt uses.")
        # open answers are scored by keywords: each text must name its own constraint and no other
        named = [o.name for o in constraints.values() if names_constraint(o, c.text)]
        if named != [c.name]:
            raise DataError(f"{where}: the text of {c.name!r} ({c.text!r}) is named by the keywords of {named}; "
                            "expected exactly its own. Adjust the keywords.")
    for refusal in data["refusals"]:
        leaked = [c.name for c in constraints.values() if names_constraint(c, refusal)]
        if leaked:
            raise DataError(f"{where}: the refusal {refusal!r} contains keywords of {leaked}; a refusal must not "
                            "reveal any constraint. Reword it.")


def load_ssc(path: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Constraint]]:
    """The SSC data file as ``(raw data, constraints by name)`` (validated; cached per path)."""
    return _load(str(Path(path) if path is not None else data_path()))


def load_constraints(path: str | Path | None = None) -> dict[str, Constraint]:
    """The constraints by name, in file order."""
    return dict(load_ssc(path)[1])


def tag_message(prompt: str, code: str, fmt: str | None = None) -> str:
    """A user message carrying the code word (the format comes from the data file)."""
    fmt = fmt if fmt is not None else load_ssc()[0]["format"]
    return fmt.format(prompt=prompt, code=code)


def read_prompt_file(path: Path) -> list[str]:
    """Non-empty lines of a shared prompt file (typed error when it is missing)."""
    if not path.is_file():
        raise DataError(f"SSC prompt file {str(path)!r} does not exist; pass the shared data folder that holds "
                        "secrets/ssc/ssc_{standard,direct}_{val,test}.txt (data_dir=..., --data-dir or $AO_DATA_DIR).")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"SSC prompt file {str(path)!r} holds no prompts; expected one prompt per line.")
    return lines


def shared_prompts(data_dir: Path, kind: str, split: str) -> list[str]:
    """``secrets/ssc/ssc_{kind}_{split}.txt`` under the shared data folder (kind: standard | direct)."""
    return read_prompt_file(Path(data_dir) / "secrets" / "ssc" / f"ssc_{kind}_{split}.txt")


__all__ = ["DATA_FILE", "data_path", "load_constraints", "load_ssc", "read_prompt_file", "shared_prompts",
           "tag_message"]
