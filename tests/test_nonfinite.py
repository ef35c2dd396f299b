"""``optim.skip_nonfinite``: a step with a NaN/inf gradient changes no weight; ten in a row stop the run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from activation_oracles.errors import DataError
from activation_oracles.training.config import apply_overrides
from activation_oracles.training.presets import preset


def _trainer(tmp_path, *overrides: str):
    from activation_oracles.training.trainer import Trainer

    cfg = apply_overrides(preset("tiny"), ["optim.steps=4", "eval.every=0", "checkpoint.every=0", *overrides])
    cfg = replace(cfg, output=replace(cfg.output, progress=False, tensorboard=False))
    return Trainer(cfg, out_dir=tmp_path / "run", log=lambda _msg: None)


def _first_step_with_a_nan_gradient(trainer) -> tuple[list[torch.Tensor], float]:
    before = [p.detach().clone() for p in trainer.params]
    trainer.compute_step(next(iter(trainer.stream)))
    trainer.params[0].grad.view(-1)[0] = float("nan")
    norm = float(trainer.optimizer_step())
    return before, norm


def test_a_nan_gradient_changes_no_weight(tmp_path):
    trainer = _trainer(tmp_path)
    before, norm = _first_step_with_a_nan_gradient(trainer)
    assert math.isnan(norm)
    # AdamW's moments start at zero, so a zeroed first gradient moves nothing at all
    assert all(torch.equal(b, p.detach()) for b, p in zip(before, trainer.params))
    # and the next, healthy step trains as usual
    trainer.compute_step(next(iter(trainer.stream)))
    assert math.isfinite(float(trainer.optimizer_step()))
    assert all(torch.isfinite(p).all() for p in trainer.params)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, trainer.params))


def test_without_the_guard_the_nan_reaches_the_weights(tmp_path):
    trainer = _trainer(tmp_path, "optim.skip_nonfinite=false")
    _first_step_with_a_nan_gradient(trainer)
    assert any(not torch.isfinite(p).all() for p in trainer.params)
    with pytest.raises(DataError, match=r"the loss became nan .* at step 3; lower optim.lr"):
        trainer._nonfinite(3, float("nan"), float("nan"))


def test_ten_in_a_row_stop_the_run(tmp_path):
    trainer = _trainer(tmp_path)
    for step in range(1, 10):
        trainer._nonfinite(step, float("inf"), float("nan"))
    assert trainer.nonfinite_steps == 9
    with pytest.raises(DataError, match=r"at step 10 \(10 steps in a row\)"):
        trainer._nonfinite(10, float("inf"), float("nan"))
