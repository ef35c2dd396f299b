"""Progress bars with an ETA for the slow phases, shown only when someone is watching.

Why one helper: rollout generation, activation statistics, organism checks, audits and the
oracle card each run for minutes on a CPU; without a bar a user cannot tell a slow phase from
a hung one. Every such loop calls :func:`progress`, so the rules live in one place:

* bars go to **stderr** (stdout stays the command's result, safe to pipe);
* they are drawn only on a **terminal**: a log file or a pipe would collect one line per refresh;
* ``enabled=False`` hides a bar, ``enabled=True`` asks for one, and ``enabled=None`` follows the
  ambient default. That default is **off**, so library calls stay quiet unless their caller asks;
  the ``ao`` command line turns it on for the command it runs (:func:`progress_default`);
* ``AO_PROGRESS=never`` hides every bar; ``AO_PROGRESS=always`` draws them off a terminal too
  (for a log you want them in). A caller's ``enabled=False`` always wins.

>>> import io
>>> list(progress(range(3), "quiet", enabled=False, file=io.StringIO()))
[0, 1, 2]
>>> with progress_default(True):
...     progress_enabled(None, file=io.StringIO())  # a StringIO is no terminal
False
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

__all__ = ["ENV_VAR", "progress", "progress_default", "progress_enabled"]

ENV_VAR = "AO_PROGRESS"
_DEFAULT: ContextVar[bool] = ContextVar("activation_oracles_progress_default", default=False)


@contextmanager
def progress_default(enabled: bool) -> Iterator[None]:
    """Within the block, bars whose caller passed ``enabled=None`` are shown (``True``) or hidden.

    The ``ao`` CLI wraps each command in ``progress_default(True)``; a context variable (not a
    global) so the setting ends with the block and never leaks into the caller's later code.
    """
    token = _DEFAULT.set(bool(enabled))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real stream
        return False


def progress_enabled(enabled: bool | None = None, *, file: IO[str] | None = None) -> bool:
    """Whether a bar asked for with ``enabled`` would be drawn on ``file`` (default stderr)."""
    mode = os.environ.get(ENV_VAR, "").strip().lower()
    if enabled is False or mode in ("0", "never", "off", "false", "no"):
        return False
    wanted = _DEFAULT.get() if enabled is None else bool(enabled)
    if not wanted:
        return False
    if mode in ("1", "always", "on", "true", "yes"):
        return True
    return _is_terminal(sys.stderr if file is None else file)


def progress(iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
             enabled: bool | None = None, *, unit: str = "it", leave: bool | None = None,
             file: IO[str] | None = None, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` (or, with no iterable, one driven by ``update(n)``).

    Args:
        iterable: what to loop over; ``None`` gives a bar to ``update`` by hand (``total`` needed
            for an ETA).
        desc: the phase, e.g. ``"on-policy rollouts"``.
        total: the number of items (default ``len(iterable)`` when it has one): the ETA needs it.
        enabled: ``True``/``False`` from the caller's ``progress=`` flag; ``None`` follows
            :func:`progress_default` (off unless the CLI turned it on).
        leave: keep the finished bar on screen; ``None`` (default): only a top-level one, so bars
            nested in another (a method inside an audit inside a suite) vanish when done.
        file: the stream (default ``sys.stderr``, looked up at call time).
        tqdm_kwargs: passed on to ``tqdm`` (e.g. ``delay``, ``postfix``).

    Returns:
        A ``tqdm`` object; when the bar is hidden it is a disabled one, which iterates and
        accepts ``update``/``set_postfix``/``close`` at no cost, so callers never branch.
    """
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    shown = progress_enabled(enabled, file=stream)
    kwargs: dict[str, Any] = {"dynamic_ncols": True, "smoothing": 0.1, "mininterval": 0.5}
    kwargs.update(tqdm_kwargs)
    return tqdm(iterable, desc=desc or None, total=total, unit=unit, leave=leave, file=stream,
                disable=not shown, **kwargs)
