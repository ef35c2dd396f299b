"""Atomic, checksummed training checkpoints that load without unpickling.

A checkpoint is two files in ``<out>/checkpoints``:

* ``step_00000100.pt``: ``torch.save`` of plain data (tensors, numbers, strings, lists,
  dicts): adapter weights, optimiser and scheduler state, RNG states, data position;
* ``step_00000100.json``: the manifest, ``{"step", "sha256", "bytes", "format"}``.

Each is written to a temporary file, flushed, ``fsync``-ed and renamed into place,
data first, manifest last, so a run killed at any instant leaves either a complete
checkpoint or none. Loading checks the manifest's SHA-256 and reads the data with
``torch.load(weights_only=True)``, which never runs pickled code. A corrupted
latest checkpoint is reported and the previous one used; only when no checkpoint
is valid does :func:`load_latest` raise :class:`CheckpointError`.

>>> import tempfile, torch
>>> d = tempfile.mkdtemp()
>>> _ = save_checkpoint(d, 3, {"w": torch.ones(2), "step": 3})
>>> step, state = load_latest(d)
>>> step, state["w"].tolist()
(3, [1.0, 1.0])
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

FORMAT = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(p.parent)


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def _paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = f"step_{step:08d}"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically; return the data file's path."""
    folder = checkpoint_dir(out_dir)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    data_path, manifest_path = _paths(folder, step)
    atomic_write_bytes(data_path, data)
    manifest = {"format": FORMAT, "step": int(step), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
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


def verify(data_path: Path) -> tuple[bytes, dict[str, Any]]:
    """The checkpoint's bytes and manifest, or :class:`CheckpointError` saying what is wrong."""
    manifest_path = data_path.with_suffix(".json")
    if not manifest_path.is_file():
        raise CheckpointError(f"{data_path.name} has no manifest ({manifest_path.name}); it was never completed.")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = str(manifest["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"manifest {manifest_path.name} is unreadable ({exc}).") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{data_path.name} has format {manifest.get('format')!r}; this version reads "
                              f"format {FORMAT}.")
    data = data_path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(f"{data_path.name} is corrupted: its SHA-256 is {actual[:12]}... but the manifest "
                              f"says {expected[:12]}... ({len(data)} bytes, expected {manifest.get('bytes')}).")
    return data, manifest


def load_checkpoint(data_path: str | Path) -> dict[str, Any]:
    """Verify and load one checkpoint (tensors on CPU)."""
    p = Path(data_path)
    data, _ = verify(p)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p.name} passed its checksum but cannot be read safely ({exc}); it holds "
                              "something other than plain tensors and numbers.") from None
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
    """Python, NumPy and torch (CPU and CUDA) RNG states, as tensors/lists only (weights_only-safe)."""
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
