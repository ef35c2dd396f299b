"""Argument checks shared by the public API: each raises a typed error that names the bad value.

The public functions (``ao.capture``, ``oracle.ask``, ``Activations.save`` ...) validate
every argument here before they touch the model or the disk, so a wrong value fails at
once with a message saying what was given, what was expected and how to fix it, instead
of a traceback from deep inside torch or transformers (or, worse, a silent success).

>>> check_int("batch_size", 4, minimum=1)
4
>>> check_int("batch_size", 0, minimum=1)
Traceback (most recent call last):
  ...
activation_oracles.errors.ArgumentError: batch_size=0; expected an integer >= 1.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

from .errors import (ArgumentError, ArgumentTypeError, DeviceError, InputFileNotFoundError, OutputWriteError,
                     PromptError)

# Lone surrogates are what Python makes of bytes that are not UTF-8 (argv and os.fsdecode use
# "surrogateescape"), and what a bad "\ud800" escape produces; no tokenizer can encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_int(name: str, value: Any, *, minimum: int | None = None, fix: str = "") -> int:
    """``value`` as an int (bools refused: ``True`` is not a count), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name}={_shown(value)} ({type(value).__name__}); expected an integer"
                                + (f" >= {minimum}" if minimum is not None else "") + f".{' ' + fix if fix else ''}")
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name}={value}; expected an integer >= {minimum}.{' ' + fix if fix else ''}")
    return int(value)


def check_optional_int(name: str, value: Any, *, minimum: int | None = None) -> int | None:
    return None if value is None else check_int(name, value, minimum=minimum)


def check_bool(name: str, value: Any) -> bool:
    """Only ``True``/``False``: a string such as ``"no"`` is truthy, so accepting it would invert the intent."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name}={_shown(value)} ({type(value).__name__}); expected True or False.")
    return value


def check_real(name: str, value: Any, *, minimum: float | None = None, fix: str = "") -> float:
    """A finite real number (not a bool, not NaN or inf), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name}={_shown(value)} ({type(value).__name__}); expected a finite number."
                                + (f" {fix}" if fix else ""))
    if not math.isfinite(float(value)):
        raise ArgumentError(f"{name}={value}; expected a finite number.{' ' + fix if fix else ''}")
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name}={value}; expected a number >= {minimum}.{' ' + fix if fix else ''}")
    return float(value)


def check_text(name: str, text: str) -> str:
    """``text`` unchanged when every character can be encoded as UTF-8; else a :class:`PromptError`."""
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise PromptError(f"{name} holds a lone surrogate {bad.group()!r} at character {bad.start()} "
                          f"(near {text[max(0, bad.start() - 20):bad.start() + 20]!r}); expected valid Unicode text. "
                          "It usually comes from bytes that are not UTF-8: decode them with the right encoding, or "
                          "with errors='replace', before passing the text.")
    return text


def check_path(name: str, value: Any) -> Path:
    """A filesystem path from a ``str`` or ``os.PathLike`` (bytes and None refused)."""
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name}={_shown(value)} ({type(value).__name__}); expected a path (str or "
                                "pathlib.Path).")
    if not os.fspath(value).strip():  # Path("") is ".": check the text given, not the path made of it
        raise ArgumentError(f"{name}={_shown(value)} is empty; expected a file path.")
    # Lone surrogates are allowed here: they are how Python spells a filename's non-UTF-8 bytes.
    return Path(value)


def check_input_file(name: str, value: Any, what: str = "file") -> Path:
    """An existing regular file to read."""
    path = check_path(name, value)
    if path.is_dir():
        raise InputFileNotFoundError(f"{what} {str(path)!r} is a directory; expected a file. Pass the file itself, "
                                     "e.g. a path ending in .safetensors.")
    if not path.is_file():
        raise InputFileNotFoundError(f"{what} {str(path)!r} does not exist; check the path (relative paths start "
                                     f"from {os.getcwd()!r}).")
    return path


def check_output_file(name: str, value: Any, what: str = "file") -> Path:
    """A path a new file can be written to: not a directory, in an existing folder."""
    path = check_path(name, value)
    if path.is_dir():
        raise OutputWriteError(f"cannot write the {what} to {str(path)!r}: it is a directory; expected a file path "
                               f"such as {str(path / 'acts.safetensors')!r}.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputWriteError(f"cannot write the {what} to {str(path)!r}: folder {str(parent)!r} does not exist; "
                               "create it first or pick another path.")
    if not parent.is_dir():
        raise OutputWriteError(f"cannot write the {what} to {str(path)!r}: {str(parent)!r} is a file, not a folder.")
    return path


def check_writable_dir(name: str, value: Any) -> Path:
    """A directory that exists and accepts new files, or can be created: probed, not guessed.

    ``os.access`` answers yes for root on any mode and nothing useful for /proc, so the check
    creates (and removes) a scratch folder in the nearest existing ancestor.
    """
    import tempfile

    path = check_path(name, value)
    probe_in = path
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputWriteError(f"{name} {str(path)!r}: {str(probe_in)!r} is a file, so no folder can be made "
                               "there; pick another path.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ao-write-probe-", dir=probe_in))
    except OSError as exc:
        raise OutputWriteError(f"{name} {str(path)!r} cannot be written: {str(probe_in)!r} does not accept new "
                               f"files ({exc.strerror or exc}); pick a writable folder.") from None
    return path


def check_device(value: Any) -> Any:
    """A ``torch.device`` that exists on this machine (``None`` stays None: the caller's default).

    torch only finds out when weights move (an ``AssertionError`` "Torch not compiled with CUDA
    enabled" halfway through loading), so the device is resolved first.
    """
    if value is None:
        return None
    import torch

    if not isinstance(value, (str, torch.device)):
        raise ArgumentTypeError(f"device={_shown(value)} ({type(value).__name__}); expected a string such as "
                                "'cpu' or 'cuda:0', or a torch.device.")
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"device={value!r} is not a torch device; expected e.g. 'cpu', 'cuda', 'cuda:0' or "
                          "'mps'.") from None
    available = ["cpu"]
    if torch.cuda.is_available():
        available += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        available.append("mps")
    ok = (dev.type == "cpu"
          or (dev.type == "cuda" and torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count())
          or (dev.type == "mps" and "mps" in available))
    if not ok:
        raise DeviceError(f"device={str(value)!r} is not available on this machine; available: {', '.join(available)}. "
                          "Pass one of those (e.g. device='cpu').")
    return dev
