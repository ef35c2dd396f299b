"""Atomic, checksummed training checkpoints: tensors in safetensors, the rest in JSON, no pickles.

A checkpoint is two files in ``<out>/checkpoints``:

* ``step_00000100.safetensors``: every tensor of the state (adapter weights, optimiser
  moments, torch/NumPy RNG states), each named by its place in the state
  (``optimizer/state/0/exp_avg``);
* ``step_00000100.json``: the manifest, ``{"format", "step", "sha256", "bytes", "state",
  "state_sha256"}``, where ``state`` is the rest of the state as JSON (numbers, strings,
  lists, param groups, scheduler state, counters, Python's RNG state) with
  ``{"__tensor__": name}`` where a tensor was.

Why not ``torch.save``: a pickle can run code when it is loaded, and even
``weights_only=True`` is an unpickler with an allow-list. Both formats here are
parsed as data only. Each file is written to a temporary file, flushed,
``fsync``-ed and renamed into place, data first, manifest last, so a run killed
at any instant leaves either a complete checkpoint or none. Loading checks both
checksums. A corrupted latest checkpoint is reported and the previous one used;
only when no checkpoint is valid does :func:`load_latest` raise
:class:`CheckpointError`. Checkpoints of the older pickle format (``step_*.pt``)
are never opened: they are reported as unsafe to resume.

>>> import tempfile, torch
>>> d = tempfile.mkdtemp()
>>> _ = save_checkpoint(d, 3, {"w": torch.ones(2), "step": 3, "betas": (0.9, 0.999), "state": {0: {}}})
>>> step, state = load_latest(d)
>>> step, state["w"].tolist(), state["betas"], state["state"]
(3, [1.0, 1.0], (0.9, 0.999), {0: {}})
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..files import atomic_write_bytes

FORMAT = 2
_OLD_FORMAT = 1  # torch.save pickles (step_*.pt), written by earlier versions
_NAME = re.compile(r"^step_(\d{8,})\.(safetensors|pt)$")
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (_TENSOR, _TUPLE, _ITEMS)


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def _paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = f"step_{step:08d}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


# -- the state as JSON + named tensors ---------------------------------------------------------------

def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor], seen: dict[int, str],
            ptrs: set[int] | None = None) -> Any:
    """``value`` as JSON data; each tensor goes into ``tensors`` under its path and is replaced by a reference.

    ``seen`` maps tensor ids already stored to their names, ``ptrs`` holds their storages' addresses.
    """
    ptrs = set() if ptrs is None else ptrs
    if isinstance(value, torch.Tensor):
        if id(value) in seen:  # the same tensor object twice stays one tensor
            return {_TENSOR: seen[id(value)]}
        key = path.lstrip("/") or "tensor"
        while key in tensors:
            key += "'"
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in ptrs:
            t = t.clone()  # safetensors refuses two tensors sharing memory (views of one buffer)
            ptr = t.untyped_storage().data_ptr()
        ptrs.add(ptr)
        tensors[key] = t
        seen[id(value)] = key
        return {_TENSOR: key}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{path}/{i}", tensors, seen, ptrs) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}/{i}", tensors, seen, ptrs) for i, v in enumerate(value)]
    if isinstance(value, dict):
        plain = all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in _MARKERS)
        if plain:
            return {k: _encode(v, f"{path}/{k}", tensors, seen, ptrs) for k, v in value.items()}
        # JSON keys are strings: int keys (the optimiser's per-parameter state) keep their type this way
        return {_ITEMS: [[_encode(k, f"{path}/key", tensors, seen, ptrs),
                          _encode(v, f"{path}/{k}", tensors, seen, ptrs)] for k, v in value.items()]}
    raise CheckpointError(f"checkpoint value at {path or '/'} is a {type(value).__name__}; checkpoints hold only "
                          "tensors, numbers, strings, None, lists, tuples and dicts (stored as safetensors + JSON).")


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (marker, inner), = value.items()
        if marker == _TENSOR:
            if inner not in tensors:
                raise CheckpointError(f"{where}: the manifest refers to tensor {inner!r}, which the safetensors file "
                                      "lacks; the checkpoint is damaged.")
            return tensors[inner]
        if marker == _TUPLE:
            return tuple(_decode(v, tensors, where) for v in inner)
        if marker == _ITEMS:
            out = {}
            for k, v in inner:
                k = _decode(k, tensors, where)
                out[tuple(k) if isinstance(k, list) else k] = _decode(v, tensors, where)
            return out
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def _state_digest(state_json: Any) -> str:
    return hashlib.sha256(json.dumps(state_json, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically; return the data (safetensors) file's path."""
    from safetensors.torch import save

    folder = checkpoint_dir(out_dir)
    tensors: dict[str, torch.Tensor] = {}
    state_json = _encode(dict(state), "", tensors, {})
    data = save(tensors, metadata={"format": f"activation_oracles checkpoint {FORMAT}"})
    data_path, manifest_path = _paths(folder, step)
    atomic_write_bytes(data_path, data)
    manifest = {"format": FORMAT, "step": int(step), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "state_sha256": _state_digest(state_json), "state": state_json}
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    return data_path


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, data path), ...]``, newest first (every data file, valid or not)."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def _old_format_error(data_path: Path) -> CheckpointError:
    return CheckpointError(
        f"{data_path.name} is a checkpoint from an older version of activation_oracles (a torch.save pickle); it "
        "cannot be resumed safely, because loading a pickle can run code. It was not opened. Start the run "
        "again (--overwrite), or finish it with the version that wrote it; checkpoints are now safetensors + JSON.")


def verify(data_path: Path) -> tuple[bytes, dict[str, Any]]:
    """The checkpoint's bytes and manifest, or :class:`CheckpointError` saying what is wrong."""
    if data_path.suffix == ".pt":
        raise _old_format_error(data_path)
    manifest_path = data_path.with_suffix(".json")
    if not manifest_path.is_file():
        raise CheckpointError(f"{data_path.name} has no manifest ({manifest_path.name}); it was never completed.")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = str(manifest["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"manifest {manifest_path.name} is unreadable ({exc}).") from None
    if manifest.get("format") == _OLD_FORMAT:
        raise _old_format_error(data_path)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{data_path.name} has format {manifest.get('format')!r}; this version reads "
                              f"format {FORMAT}.")
    if "state" not in manifest or _state_digest(manifest["state"]) != manifest.get("state_sha256"):
        raise CheckpointError(f"manifest {manifest_path.name} is corrupted: its state does not match its "
                              "state_sha256.")
    data = data_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{data_path.name} is corrupted: its SHA-256 is {actual[:12]}... but the manifest "
                              f"says {expected[:12]}... ({len(data)} bytes, expected {manifest.get('bytes')}).")
    return data, manifest


def load_checkpoint(data_path: str | Path) -> dict[str, Any]:
    """Verify and load one checkpoint (tensors on CPU). Parses safetensors and JSON only, never a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(data_path)
    data, manifest = verify(p)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p.name} passed its checksum but is not a readable safetensors file ({exc}).") from None
    state = _decode(manifest["state"], tensors, p.name)
    if not isinstance(state, dict):
        raise CheckpointError(f"{p.name} holds a {type(state).__name__}; expected a dict.")
    return state


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def load_latest(out_dir: str | Path, *, report: Callable[[str], None] = _warn) -> tuple[int, dict[str, Any]] | None:
    """The newest valid checkpoint as ``(step, state)``; ``None`` when there is none at all.

    Invalid checkpoints (bad checksum, no manifest, unreadable) are reported through
    ``report`` and skipped. Raises :class:`CheckpointError` when checkpoints exist but
    none of them is valid.
    """
    found = list_checkpoints(out_dir)
    if not found:
        return None
    problems = []
    for step, path in found:
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            report(f"skipping checkpoint {path}: {exc}")
            continue
        if problems:
            report(f"resuming from the previous valid checkpoint, step {step}.")
        return step, state
    raise CheckpointError(f"no valid checkpoint in {checkpoint_dir(out_dir)}: " + " | ".join(problems)
                          + " Delete the folder (or pass --overwrite) to start again.")


def prune(out_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (manifest first, so a half-deleted one is invalid)."""
    for _, path in list_checkpoints(out_dir)[keep:]:
        for p in (path.with_suffix(".json"), path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


# -- RNG state as plain data -------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as plain data.

    torch's states are uint8 tensors and NumPy's key array becomes an int64 tensor (both go
    to the safetensors file); Python's ``random.getstate()`` is ints (JSON).
    """
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), list(internal), gauss],
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype("int64")), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
