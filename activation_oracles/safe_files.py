"""Refuse model folders that would need unpickling or remote code, before transformers sees them.

transformers can load ``pytorch_model.bin`` (a pickle: loading it can run code) and can
import Python files shipped with a model (``auto_map`` in ``config.json``; without
``trust_remote_code=False`` it even asks [y/N] on a terminal). activation_oracles only
ever reads tensors, so a folder (or hub repo) must hold safetensors weights and no
remote-code mapping; anything else gets a typed error saying what was found and how
to convert it. The checks read only file names and JSON.

>>> check_model_files({"config.json", "model.safetensors"}, "demo", lambda name: {})
>>> check_model_files({"config.json", "pytorch_model.bin"}, "demo", lambda name: {})
Traceback (most recent call last):
...
activation_oracles.errors.UnsafeFileError: model 'demo' has only pickle-based weights (pytorch_model.bin) ...
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .errors import ModelSpecError, RemoteCodeError, UnsafeFileError

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# Weight formats transformers would fall back to; all but the last two are pickles.
OTHER_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle", "tf_model*.h5",
                 "flax_model*.msgpack")
# Files whose "auto_map" makes transformers import Python code from the model repo.
CODE_MAPS = ("config.json", "tokenizer_config.json")

CONVERT_HINT = ("Convert it once, in a session where you trust the files: "
                "`m = AutoModelForCausalLM.from_pretrained(dir); m.save_pretrained(dir, safe_serialization=True)` "
                "(writes model.safetensors next to the old weights), then load that folder.")


def read_json_file(path: Path) -> Any | None:
    """``path`` parsed, ``None`` when absent; a damaged file raises :class:`ModelSpecError`."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSpecError(f"{str(path)!r} is not valid JSON ({exc}); re-save the model with "
                             "save_pretrained.") from None


def check_remote_code(data: Any, file: str, where: str) -> None:
    """Raise :class:`RemoteCodeError` when a config maps classes to Python files of the repo."""
    if not isinstance(data, dict):
        return
    # Nested configs (e.g. a text_config inside a multimodal config) can carry their own map.
    tables = [data] + [v for v in data.values() if isinstance(v, dict)]
    for table in tables:
        auto_map = table.get("auto_map")
        if auto_map:
            names = sorted(auto_map) if isinstance(auto_map, dict) else auto_map
            raise RemoteCodeError(
                f"model {where!r}: {file} has auto_map={names!r}, i.e. it needs Python code from the model "
                "repository (trust_remote_code). activation_oracles never runs a model's own code. Use a "
                "model whose architecture transformers implements (delete auto_map from the config if the "
                "model_type is a built-in one), or load it yourself and pass it to ao.as_model(...).")


def check_model_files(names: Collection[str], where: str, read_json: Callable[[str], Any | None]) -> None:
    """Check a model's file list (relative names) and configs; raise before any weight is read.

    ``read_json(name)`` returns a parsed JSON file of the model, or ``None`` when absent.
    """
    for file in CODE_MAPS:
        check_remote_code(read_json(file), file, where)
    config = read_json("config.json")
    explicit = config.get("transformers_weights") if isinstance(config, dict) else None
    if explicit is not None:
        # transformers loads this file whatever use_safetensors says, so it must itself be safetensors.
        if not isinstance(explicit, str) or not explicit.endswith((".safetensors", ".safetensors.index.json")):
            raise UnsafeFileError(f"model {where!r}: config.json sets transformers_weights={explicit!r}; "
                                  "activation_oracles loads only .safetensors weights. " + CONVERT_HINT)
        if explicit not in names:
            raise ModelSpecError(f"model {where!r}: config.json names transformers_weights={explicit!r}, which "
                                 "is not there; re-save the model with save_pretrained.")
        return
    if any(n in names for n in SAFE_WEIGHTS):
        return
    found = sorted(n for n in names if any(fnmatch(n.rsplit("/", 1)[-1], p) for p in OTHER_WEIGHTS))
    other_st = sorted(n for n in names if n.endswith(".safetensors"))
    if found:
        raise UnsafeFileError(f"model {where!r} has only pickle-based weights ({', '.join(found)}) and no "
                              "model.safetensors; activation_oracles never unpickles (a pickle can run code "
                              "when loaded). " + CONVERT_HINT)
    extra = f" (found {', '.join(other_st)}, not named model.safetensors)" if other_st else ""
    raise ModelSpecError(f"model {where!r} has no model.safetensors or model.safetensors.index.json{extra}; "
                         "expected a folder written by model.save_pretrained(dir) (safetensors is its default).")


def check_model_folder(folder: str | Path) -> None:
    """:func:`check_model_files` on a local folder."""
    root = Path(folder)
    # transformers reads weights from the folder's top level only (no subfolder is used here).
    names = {p.name for p in root.iterdir() if p.is_file()}
    check_model_files(names, str(root), lambda name: read_json_file(root / name))
