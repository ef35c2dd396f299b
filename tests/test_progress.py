"""Progress bars: drawn on a terminal when asked for, never on a pipe or with ``enabled=False``."""

from __future__ import annotations

import io

import pytest

from activation_oracles.progress import ENV_VAR, progress, progress_default, progress_enabled


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _drawn(enabled: bool | None, stream: io.StringIO) -> str:
    out = list(progress(range(5), "phase", enabled=enabled, file=stream, mininterval=0))
    assert out == list(range(5))  # the items pass through whether or not a bar is drawn
    return stream.getvalue()


def test_a_bar_with_an_eta_is_drawn_on_a_terminal() -> None:
    text = _drawn(True, FakeTTY())
    assert "phase" in text and "5/5" in text and "<" in text  # tqdm's "elapsed<remaining" is the ETA


def test_enabled_false_hides_the_bar_even_on_a_terminal() -> None:
    assert _drawn(False, FakeTTY()) == ""


def test_no_bar_on_a_stream_that_is_not_a_terminal() -> None:
    assert _drawn(True, io.StringIO()) == ""


def test_the_ambient_default_is_off_and_the_cli_context_turns_it_on() -> None:
    assert _drawn(None, FakeTTY()) == ""  # library calls are quiet unless asked
    with progress_default(True):
        assert "phase" in _drawn(None, FakeTTY())
        assert _drawn(False, FakeTTY()) == ""  # the caller's progress=False still wins
    assert progress_enabled(None, file=FakeTTY()) is False  # the setting ended with the block


def test_ao_progress_env_forces_bars_into_logs_or_hides_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "always")
    assert "phase" in _drawn(True, io.StringIO())
    assert _drawn(False, io.StringIO()) == ""
    monkeypatch.setenv(ENV_VAR, "never")
    assert _drawn(True, FakeTTY()) == ""


def test_a_manual_bar_accepts_updates_when_hidden_and_shown() -> None:
    for enabled, stream in ((False, FakeTTY()), (True, FakeTTY())):
        with progress(desc="steps", total=3, enabled=enabled, file=stream, unit="step", mininterval=0) as bar:
            for _ in range(3):
                bar.update(1)
                bar.set_postfix(loss="0.1", refresh=False)
        assert ("3/3" in stream.getvalue()) is enabled


def test_on_policy_rollouts_show_a_bar_only_when_asked(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    from activation_oracles.training.on_policy import OnPolicySource

    src = OnPolicySource(tiny, n_rollouts=2, max_new_tokens=2, batch_size=2, seed=0)
    err = FakeTTY()
    monkeypatch.setattr("sys.stderr", err)
    assert len(list(src.rollouts(progress=False))) == 2 and err.getvalue() == ""
    src = OnPolicySource(tiny, n_rollouts=2, max_new_tokens=2, batch_size=2, seed=0)
    assert len(list(src.rollouts(progress=True))) == 2
    assert "on-policy rollouts" in err.getvalue() and "2/2" in err.getvalue()
