"""The training config's file I/O: plain data with type checks, TOML/YAML/JSON files, ``--set`` overrides.

:class:`~activation_oracles.training.config.TrainConfig` is the schema (sections, defaults, help,
validation); this module turns files and ``key=value`` strings into it and back, checking every key
and value on the way (an unknown key raises a :class:`ConfigError` that lists its section's keys).

>>> from activation_oracles.training.config import TrainConfig
>>> apply_overrides(TrainConfig(), ["optim.lr=3e-4"]).optim.lr
0.0003
>>> parse_value("[1, 2]")
[1, 2]
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import SourceSpec, TrainConfig

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def config_from_toml(cls: type[TrainConfig], text: str, base: TrainConfig | None) -> TrainConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML ({exc}).") from None
    return cls.from_dict(data, base=base)


def config_from_yaml(cls: type[TrainConfig], text: str, base: TrainConfig | None) -> TrainConfig:
    yaml = yaml_module()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the YAML document is a {type(data).__name__}; expected a mapping of sections.")
    return cls.from_dict(data, base=base)


def load_config(cls: type[TrainConfig], path: str | Path, base: TrainConfig | None) -> TrainConfig:
    """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file (on top of ``base``)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory; pass a TOML or YAML file "
                          "(see `ao train --help`).")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a TOML or YAML file "
                          "(see `ao train --help`).")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} "
                          f"at offset {exc.start}); expected a TOML, YAML or JSON file. Did you pass a binary "
                          "file (a checkpoint, a .safetensors)?") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({exc.strerror or exc}).") from None
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return cls.from_yaml(text, base=base)
    if suffix == ".json":
        try:
            return cls.from_dict(json.loads(text), base=base)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{str(p)!r} is not valid JSON ({exc}).") from None
    if suffix in (".toml", ""):
        return cls.from_toml(text, base=base)
    raise ConfigError(f"config file {str(p)!r} has suffix {suffix!r}; expected .toml, .yaml, .yml or .json.")


# ------------------------------------------------------------------------------------------------------
# plain-data conversion with type checks
# ------------------------------------------------------------------------------------------------------

def to_plain(obj: Any) -> Any:
    if isinstance(obj, SourceSpec):
        out = {"kind": obj.kind, "weight": obj.weight}
        for k, v in obj.params.items():
            out[k] = to_plain(v)
        return out
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_name(path: str) -> str:
    return f"[{path}]" if path else "the top level"


def from_plain(cls: type, data: Any, base: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{_section_name(path)} is a {type(data).__name__} ({data!r}); expected a table of keys.")
    valid = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {_section_name(path)}; valid keys are: "
                          f"{', '.join(sorted(valid))}.")
    hints = _hints(cls)
    changes = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        changes[key] = _coerce(hints[key], value, getattr(base, key), key_path)
    try:
        return replace(base, **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise ConfigError(f"invalid values in {_section_name(path)}: {exc}") from None


def _sourcefrom_plain(data: Any, path: str) -> SourceSpec:
    if isinstance(data, SourceSpec):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is {data!r}; expected a table with 'kind', 'weight' and the builder's parameters.")
    data = dict(data)
    if "kind" not in data:
        raise ConfigError(f"{path} lacks 'kind'; expected one of context_prediction, classification, families, "
                          "system_prompt_qa, on_policy or 'package.module:Class' (a class with examples(tokenizer, rng)).")
    kind = _coerce(str, data.pop("kind"), "", f"{path}.kind")
    weight = _coerce(float, data.pop("weight", 1.0), 1.0, f"{path}.weight")
    params = data.pop("params", {}) if isinstance(data.get("params"), dict) else {}
    params.update(data)
    return SourceSpec(kind=kind, weight=weight, params=params)


def _coerce(tp: Any, value: Any, current: Any, key: str) -> Any:
    """Convert ``value`` (from a file or a ``--set`` string) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value, current, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}={value!r}; expected true or false.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}; expected an integer.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}; expected an integer.")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}; expected a number.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}; expected a number.")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r}; expected a string.")
    if origin in (tuple, list):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            value = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if item_tp is SourceSpec:
            return tuple(_sourcefrom_plain(v, f"{key}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(item_tp, v, None, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}; expected a table.")
        return dict(value)
    if tp is Any or isinstance(tp, (types.UnionType,)):
        return value
    return value  # pragma: no cover


# ------------------------------------------------------------------------------------------------------
# --set key=value overrides
# ------------------------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (numbers, booleans, quoted strings, arrays), else the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``section.key=value`` overrides; sources are indexed: ``data.sources.0.weight=2``."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} has no '='; expected key=value, e.g. optim.lr=1e-4.")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if len(parts) < 2:
            raise ConfigError(f"--set {item!r}: key {key!r} names no section; expected section.key=value "
                              f"with a section in {', '.join(f.name for f in fields(TrainConfig))}.")
        node: Any = data
        cls: Any = TrainConfig
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[:depth]) or None
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth])} has {len(node)} entries; "
                                      f"{part!r} is not an index in [0, {len(node)}).")
                node = node[int(part)]
                cls = SourceSpec
                continue
            valid = [f.name for f in fields(cls)] if cls is not SourceSpec else list(node)
            if part not in node or (cls is not SourceSpec and part not in valid):
                raise ConfigError(f"unknown key {part!r} in {_section_name(where or '')}; valid keys are: "
                                  f"{', '.join(sorted(valid))}.")
            hint = _hints(cls).get(part) if cls is not SourceSpec else None
            node = node[part]
            cls = hint if dataclasses.is_dataclass(hint) else cls
        last = parts[-1]
        if isinstance(node, list):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:-1])} is a list; address an entry, e.g. "
                              f"{'.'.join(parts[:-1])}.0.weight=2.")
        if cls is not SourceSpec:
            valid = [f.name for f in fields(cls)]
            if last not in valid:
                raise ConfigError(f"unknown key {last!r} in [{'.'.join(parts[:-1])}]; valid keys are: "
                                  f"{', '.join(sorted(valid))}.")
        node[last] = parse_value(raw.strip())
    return TrainConfig.from_dict(data)


# ------------------------------------------------------------------------------------------------------
# YAML (TOML is written by toml_writer)
# ------------------------------------------------------------------------------------------------------

def yaml_module() -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError("YAML configs need PyYAML (pip install pyyaml); or write the config as TOML.") from None
    return yaml


def field_help(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str]]:
    """``[(dotted key, help text), ...]`` for every leaf field (for ``--help`` and docs)."""
    out: list[tuple[str, str]] = []
    for f in fields(cls):
        hint = _hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            out.extend(field_help(hint, key + "."))
        else:
            out.append((key, f.metadata.get("help", "")))
    return out
