"""A small TOML writer for config trees: what ``TrainConfig.to_toml`` and every run's config.toml use.

Why not tomli-w: it breaks every array onto one line per element and writes a source's
``family_weights`` as a separate sub-table, which makes a run's printed config several times
longer and harder to read; configs here are small (tables, arrays of tables, scalars, short
arrays, inline tables), and this writer keeps each key on one line. Round trips through
``tomllib`` are tested (``TrainConfig.from_toml(cfg.to_toml()) == cfg``).

>>> print(dumps_toml({"optim": {"lr": 0.0003, "betas": [0.9, 0.999]}, "data": {"sources": [{"kind": "x"}]}}), end="")
[optim]
lr = 0.0003
betas = [0.9, 0.999]
<BLANKLINE>
[data]
<BLANKLINE>
[[data.sources]]
kind = "x"
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ConfigError


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_scalar(x)}" for k, x in v.items()) + "}"
    if v is None:
        raise ConfigError("TOML has no null; remove the key or give it a value.")
    raise ConfigError(f"cannot write {type(v).__name__} {v!r} to TOML.")


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else json.dumps(k)


def dumps_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the config tree (tables, arrays of tables, scalars, arrays, inline tables)."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any], header: str | None) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_array(v)}
        subtables = {k: v for k, v in d.items() if isinstance(v, dict)}
        arrays = {k: v for k, v in d.items() if _is_table_array(v)}
        if header is not None:
            lines.append(header)
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_scalar(v)}")
        for k, v in subtables.items():
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            lines.append("")
            table(name, v, f"[{name}]")
        for k, v in arrays.items():
            name = f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k)
            for entry in v:
                lines.append("")
                lines.append(f"[[{name}]]")
                for ek, ev in entry.items():
                    lines.append(f"{_toml_key(ek)} = {_toml_scalar(ev)}")

    table("", data, None)
    return "\n".join(lines).strip() + "\n"


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)
