"""``optim.max_minutes``: a run on a leased machine stops at a log step and still writes a loadable oracle."""

from __future__ import annotations

from dataclasses import replace

import pytest

from activation_oracles.errors import ConfigError
from activation_oracles.training.config import apply_overrides
from activation_oracles.training.presets import preset


def _cfg(*overrides: str):
    cfg = apply_overrides(preset("tiny"), ["optim.steps=40", "eval.every=0", "checkpoint.every=0",
                                           "output.log_every=5", *overrides])
    return replace(cfg, output=replace(cfg.output, progress=False, tensorboard=False))


def test_a_spent_budget_ends_the_run_at_the_next_log_step_with_an_oracle(tmp_path):
    import activation_oracles as ao
    from activation_oracles.training.checkpoint import list_checkpoints
    from activation_oracles.training.trainer import Trainer

    said: list[str] = []
    result = Trainer(_cfg("optim.max_minutes=1e-9"), out_dir=tmp_path / "run", log=said.append).train()
    assert result.steps == 5  # the first log step, not the configured 40
    oracle = ao.load_oracle(tmp_path / "run")
    assert oracle.config.training["steps"] == 5  # a complete oracle directory, with the step it ended at
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [5]
    assert any("optim.max_minutes=1e-09 reached at step 5 of 40" in line for line in said)


def test_no_budget_runs_every_step(tmp_path):
    from activation_oracles.training.trainer import Trainer

    assert Trainer(_cfg("optim.steps=7"), out_dir=tmp_path / "run").train().steps == 7


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_negative_or_infinite_budget_is_refused(value):
    with pytest.raises(ConfigError, match=r"optim.max_minutes.*minutes >= 0"):
        apply_overrides(preset("tiny"), [f"optim.max_minutes={value}"])
