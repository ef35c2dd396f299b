"""How much the libraries under us say: quiet in the ``ao`` CLI unless ``-v``, untouched by the Python API.

Why: a plain ``ao ask`` used to print a screen of transformers/peft notices (FutureWarnings about
renamed arguments, "Loading weights" bars, hub download bars) above a one-line answer. Those
notices are for the libraries' developers; a user needs them only when something is wrong, and
then ``ao -v ...`` shows them. Our own messages and errors are never hidden.

Only the libraries' own switches are used, each restored when the block ends:

* transformers: its loggers at ERROR (``set_verbosity_error``) and its progress bars off
  (``disable_progress_bar``, which also turns off huggingface_hub's);
* huggingface_hub: ``disable_progress_bars()``;
* Python warnings: :data:`QUIET_CATEGORIES` raised *from* the modules in :data:`QUIET_MODULES`
  are ignored (``warnings.filterwarnings(module=...)``); a warning raised from our own code,
  or of another category, still shows.

Nothing happens on import: ``import activation_oracles`` never changes logging (a library that
does would silence its users' own warnings).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

__all__ = ["QUIET_CATEGORIES", "QUIET_MODULES", "library_verbosity"]

#: Modules whose warnings are noise to a CLI user (a regex for ``warnings.filterwarnings``).
QUIET_MODULES = r"(transformers|peft|torch|huggingface_hub|accelerate|safetensors|tokenizers)(\..*)?$"
QUIET_CATEGORIES: tuple[type[Warning], ...] = (FutureWarning, UserWarning, DeprecationWarning,
                                               PendingDeprecationWarning)


@contextmanager
def library_verbosity(verbose: bool) -> Iterator[None]:
    """Run the block with the libraries quiet (``verbose=False``) or as they are (``verbose=True``).

    ``verbose=True`` changes nothing: the libraries' defaults (their warnings, their bars) show.
    """
    if verbose:
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for category in QUIET_CATEGORIES:
            warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)
        stack.callback(_quiet_hub())  # hub first: transformers' switch turns the hub's bars off too
        stack.callback(_quiet_transformers())
        yield


def _quiet_transformers() -> Callable[[], None]:
    """Set transformers to ERROR with no bars; return the function that restores it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return _nothing
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    return restore


def _quiet_hub() -> Callable[[], None]:
    """Turn huggingface_hub's bars off; return the function that turns them back on (if they were)."""
    try:
        from huggingface_hub import utils as hub_utils
    except ImportError:  # pragma: no cover - a transformers dependency
        return _nothing
    was_disabled = hub_utils.are_progress_bars_disabled()
    hub_utils.disable_progress_bars()

    def restore() -> None:
        if not was_disabled:
            hub_utils.enable_progress_bars()
    return restore


def _nothing() -> None:
    return None
