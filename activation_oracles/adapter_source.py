"""Find a LoRA adapter folder: a local directory, or a Hugging Face hub repo fetched as JSON + safetensors only.

Oracles and organisms published elsewhere (the reference's oracles, the paper's taboo/gender
organisms) are plain PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.
:func:`resolve_adapter_dir` turns a spec into such a folder without reading any weight:

- an existing directory is used as it is;
- an ``org/name`` spec that is not a directory is a hub repo: its cached snapshot when there is one,
  else (online) a download of its ``*.json`` and ``*.safetensors`` files only, so a pickle
  (``adapter_model.bin``, ``trainer_state.pt``) never reaches the disk; offline (``HF_HUB_OFFLINE=1``
  or no route to the hub) it fails at once with :class:`~.errors.OfflineError`;
- anything else is an :class:`~.errors.AdapterError` saying what was expected.

:func:`check_adapter_files` then refuses a folder whose weights are missing or only pickled.
What the adapter *contains* is checked by :mod:`.adapter_checks` before anything is attached.

>>> looks_like_repo_id("adamkarvonen/checkpoints_latentqa_cls_past_lens_addition_Qwen3-8B")
True
>>> looks_like_repo_id("./oracles/run1"), looks_like_repo_id("smollm2-135m"), looks_like_repo_id("/abs/dir")
(False, False, False)
>>> same_base_name("Qwen/Qwen3-8B", "/models/qwen3-8b"), same_base_name("google/gemma-2-9b-it", "tiny-llama")
(True, False)
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from .adapter_checks import ADAPTER_CONFIG, ADAPTER_FILE
from .errors import AdapterError, OfflineError, UnsafeFileError

#: The only files fetched from a hub repo (never ``*.bin`` / ``*.pt`` pickles, never code).
HUB_PATTERNS = ("*.json", "*.safetensors")
PICKLE_NAMES = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt", "adapter_model.pth")
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BaseNameWarning(UserWarning):
    """An adapter names another base model than the one it is attached to, although its shapes fit."""


def looks_like_repo_id(spec: str) -> bool:
    """Whether ``spec`` has the form of a hub repo id, ``org/name`` (one slash, no path prefix)."""
    parts = spec.split("/")
    return len(parts) == 2 and all(_REPO_PART.match(p) and not p.endswith(".") for p in parts)


def resolve_adapter_dir(spec: str | os.PathLike[str], *, what: str) -> Path:
    """The local folder of the adapter ``spec`` names (a directory, or a hub repo id; see the module doc).

    Args:
        spec: a directory, or ``org/name`` on the Hugging Face hub.
        what: what the adapter is, for messages (``"oracle"``, ``"organism adapter"``).

    Returns:
        The folder (for a hub repo, its snapshot in the Hugging Face cache).

    Raises:
        UnsafeFileError: ``spec`` is a file (a checkpoint is never unpickled).
        OfflineError: a hub repo that is not cached while the hub cannot be reached.
        AdapterError: ``spec`` is neither an existing directory nor a repo id, or the download failed.
    """
    spec_str = os.fspath(spec)
    if not isinstance(spec_str, str) or not spec_str.strip():
        raise AdapterError(f"{what} spec {spec!r} is empty; pass a directory holding {ADAPTER_CONFIG} and "
                           f"{ADAPTER_FILE}, or a hub id 'org/name'.")
    folder = Path(spec_str).expanduser()
    if folder.is_dir():
        return folder
    if folder.is_file():
        raise UnsafeFileError(f"{what} {spec_str!r} is a file; expected a directory holding {ADAPTER_CONFIG} and "
                              f"{ADAPTER_FILE} (checkpoint files are never unpickled).")
    if looks_like_repo_id(spec_str):
        return fetch_adapter_repo(spec_str, what=what)
    raise AdapterError(f"{what} {spec_str!r} is neither an existing directory nor a hub id ('org/name'); pass the "
                       f"folder holding {ADAPTER_CONFIG} and {ADAPTER_FILE}, or its hub id.")


def _cached_snapshot(repo_id: str) -> Path | None:
    import huggingface_hub as hub

    try:
        snap = Path(hub.snapshot_download(repo_id, allow_patterns=list(HUB_PATTERNS), local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError (an OSError), or a cache the hub library rejects
        return None
    # a snapshot with only some files cached (e.g. just a README) is not a usable adapter
    return snap if (snap / ADAPTER_CONFIG).is_file() and (snap / ADAPTER_FILE).is_file() else None


def fetch_adapter_repo(repo_id: str, *, what: str) -> Path:
    """The snapshot folder of hub repo ``repo_id``: cached, or downloaded (JSON and safetensors files only).

    Raises:
        OfflineError: not cached, and ``HF_HUB_OFFLINE`` is set or the hub cannot be reached (checked
            with one short connection attempt, so this never hangs).
        AdapterError: the download failed (no such repo, no access, ...).
    """
    cached = _cached_snapshot(repo_id)
    if cached is not None:
        return cached
    from .models import _hub_reachable

    if not _hub_reachable():
        raise OfflineError(
            f"{what} {repo_id!r} is not a local directory, so it was taken as a Hugging Face hub id; it is not in "
            "the local cache and the hub cannot be reached (offline, or HF_HUB_OFFLINE is set). On a connected "
            f"machine run `huggingface-cli download {repo_id} --include '*.json' '*.safetensors' --local-dir DIR` "
            "(or huggingface_hub.snapshot_download) and pass DIR instead, or unset HF_HUB_OFFLINE.")
    import huggingface_hub as hub

    try:
        snap = hub.snapshot_download(repo_id, allow_patterns=list(HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - RepositoryNotFoundError, GatedRepoError, HTTP and OS errors
        reason = " ".join(str(exc).split())[:300]
        raise AdapterError(f"{what} {repo_id!r} could not be downloaded from the hub ({type(exc).__name__}: "
                           f"{reason}); check the repo id and your access (huggingface-cli login), or pass a local "
                           "directory.") from None
    return Path(snap)


def check_adapter_files(folder: Path, *, what: str) -> None:
    """Refuse ``folder`` unless it holds ``adapter_config.json`` and ``adapter_model.safetensors``.

    Raises:
        UnsafeFileError: the weights exist only as a pickle (``adapter_model.bin``, ...).
        AdapterError: the config or the weights are missing.
    """
    if not (folder / ADAPTER_FILE).is_file():
        pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise UnsafeFileError(f"{what} {str(folder)!r} has only pickle-based weights ({', '.join(pickles)}); "
                                  "activation_oracles never unpickles. Re-save the adapter with safetensors "
                                  "(peft_model.save_pretrained(dir, safe_serialization=True)) in a session where "
                                  "you trust the file.")
    missing = [n for n in (ADAPTER_CONFIG, ADAPTER_FILE) if not (folder / n).is_file()]
    if missing:
        raise AdapterError(f"{what} {str(folder)!r} lacks {' and '.join(missing)}; a LoRA adapter folder holds "
                           f"{ADAPTER_CONFIG} and {ADAPTER_FILE} (as peft_model.save_pretrained(dir) writes them). "
                           "Copy the missing file(s) next to the other, or re-download the adapter.")


def _short(name: str) -> str:
    return name.strip().rstrip("/").rsplit("/", 1)[-1].lower()


def same_base_name(declared: str, loaded: str) -> bool:
    """Whether two model names are the same model, comparing only the last path part, case-insensitively
    (``"Qwen/Qwen3-8B"`` and a local copy ``"/models/qwen3-8b"`` agree)."""
    return _short(declared) == _short(loaded)


def warn_if_other_base(declared: object, model_name: str, *, what: str) -> str | None:
    """Warn (:class:`BaseNameWarning`) when an adapter's ``base_model_name_or_path`` names another model.

    Shapes and module names, which :func:`~.adapter_checks.check_adapter_fits` checks, decide
    whether an adapter can be attached; a differing *name* alone is only a warning, because a
    local copy, a merged fine-tune or a renamed checkpoint of the same base carries another name.

    Returns:
        A one-line note for the record, or ``None`` when the names agree (or none is declared).
    """
    if not isinstance(declared, str) or not declared.strip() or same_base_name(declared, model_name):
        return None
    note = (f"{what} declares base_model_name_or_path={declared!r} but is attached to {model_name!r}; its shapes "
            "fit, so it was loaded. If that is not the same model (e.g. a base vs an -it checkpoint), load the "
            f"declared base (ao.load_model({declared!r})) for results the adapter was trained for.")
    warnings.warn(note, BaseNameWarning, stacklevel=3)
    return note
