"""Library noise: hidden in ``ao`` commands unless ``-v``, never touched by the Python API."""

from __future__ import annotations

import logging
import warnings

import pytest
from transformers.utils import logging as hf_logging

import activation_oracles.cli_ask as cli_ask
from activation_oracles.cli import main
from activation_oracles.verbosity import library_verbosity


class Records(logging.Handler):
    """Collects what reaches the transformers logger's handlers."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _library_noise() -> None:
    """What transformers and peft do on a load: a logger warning and a FutureWarning from their own modules."""
    hf_logging.get_logger("transformers.modeling_utils").warning("transformers notice")
    warnings.warn_explicit("peft notice", FutureWarning, "peft/tuners/lora/model.py", 1,
                           module="peft.tuners.lora.model")
    warnings.warn_explicit("our own warning", UserWarning, "activation_oracles/x.py", 1,
                           module="activation_oracles.x")


@pytest.fixture
def heard(monkeypatch: pytest.MonkeyPatch):
    """Run ``ao ask`` with a handler that makes library noise; return (logger messages, warnings) seen."""
    def run(argv: list[str]) -> tuple[list[str], list[str]]:
        handler = Records()
        root = logging.getLogger("transformers")
        root.addHandler(handler)
        monkeypatch.setattr(cli_ask, "cmd_ask", lambda args: (_library_noise(), 0)[1])
        # Start from transformers' default level whatever earlier tests (or libraries they loaded) left:
        # what is tested is what `ao` and `ao -v` change, not the ambient level.
        child = logging.getLogger("transformers.modeling_utils")
        ambient = hf_logging.get_verbosity(), logging.root.manager.disable, child.level
        hf_logging.set_verbosity_warning()
        logging.disable(logging.NOTSET)
        child.setLevel(logging.NOTSET)
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                assert main(argv) == 0
        finally:
            root.removeHandler(handler)
            hf_logging.set_verbosity(ambient[0])
            logging.disable(ambient[1])
            child.setLevel(ambient[2])
        return handler.messages, [str(w.message) for w in seen]
    return run


def test_ao_hides_library_warnings_by_default(heard) -> None:
    logged, warned = heard(["ask", "--question", "q"])
    assert logged == [] and "peft notice" not in warned
    assert "our own warning" in warned  # only the libraries' noise is filtered


@pytest.mark.parametrize("argv", [["-v", "ask", "--question", "q"], ["ask", "--question", "q", "--verbose"]])
def test_ao_verbose_shows_them_before_or_after_the_subcommand(heard, argv: list[str]) -> None:
    logged, warned = heard(argv)
    assert logged == ["transformers notice"] and "peft notice" in warned and "our own warning" in warned


def test_the_quiet_block_restores_the_libraries_settings() -> None:
    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), list(warnings.filters))
    with library_verbosity(False):
        assert hf_logging.get_verbosity() == logging.ERROR
        assert not hf_logging.is_progress_bar_enabled()
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), list(warnings.filters)) == before
    with library_verbosity(True):  # -v: nothing changed at all
        assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before[:2]


def test_importing_the_package_changes_no_logging() -> None:
    import subprocess
    import sys

    code = ("import logging, warnings; f = list(warnings.filters); import activation_oracles, "
            "activation_oracles.cli, activation_oracles.verbosity, activation_oracles.progress; "
            "assert list(warnings.filters) == f; assert 'transformers' not in __import__('sys').modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
