"""Loss weighting: token-mean (the reference's) or example-mean, computed by hand on known logits."""

from __future__ import annotations

import pytest
import torch

from activation_oracles.errors import ConfigError
from activation_oracles.training.batching import IGNORE, answer_loss_sum, answer_loss_terms
from activation_oracles.training.config import apply_overrides
from activation_oracles.training.presets import preset


def test_both_terms_equal_the_hand_computed_sums():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    labels = torch.full((2, 6), IGNORE)
    labels[0, 3:] = torch.tensor([1, 2, 3])  # a 3-token answer
    labels[1, 5] = 4  # a 1-token answer
    lp = torch.log_softmax(logits, -1)
    first = -(lp[0, 0, 1] + lp[0, 1, 2] + lp[0, 2, 3])
    second = -lp[1, 2, 4]
    token_sum, example_sum = answer_loss_terms(logits, labels)
    assert float(token_sum) == pytest.approx(float(first + second), abs=1e-5)
    assert float(example_sum) == pytest.approx(float(first / 3 + second), abs=1e-5)
    assert float(answer_loss_sum(logits, labels)) == pytest.approx(float(token_sum), abs=1e-6)


def test_an_example_weighted_step_follows_the_example_mean(tmp_path):
    """One step's gradient equals the gradient of the mean over examples of their own token means."""
    from dataclasses import replace

    from activation_oracles.training.trainer import Trainer

    # dropout 0: the two passes below must see the same network (dropout masks would differ)
    cfg = apply_overrides(preset("tiny"), ["optim.steps=1", "eval.every=0", "checkpoint.every=0",
                                           "optim.loss_weighting=example", "lora.dropout=0.0"])
    cfg = replace(cfg, output=replace(cfg.output, progress=False, tensorboard=False))
    trainer = Trainer(cfg, out_dir=tmp_path / "run")
    batch = next(iter(trainer.stream))
    trainer.compute_step(batch)
    got = [p.grad.clone() for p in trainer.params]
    for p in trainer.params:
        p.grad = None
    step = trainer.make_step_input(batch)
    total = None
    for mb in step.micro:
        _, ex = trainer.oracle_loss_terms(mb, trainer.target_vectors(mb))
        total = ex if total is None else total + ex
    (total / len(step.examples)).backward()
    for g, p in zip(got, trainer.params):
        assert torch.allclose(g, p.grad, atol=1e-6)
    assert any(float(g.abs().max()) > 0 for g in got)


def test_unknown_weighting_is_refused():
    with pytest.raises(ConfigError, match=r"optim.loss_weighting.*'token' or 'example'"):
        apply_overrides(preset("tiny"), ["optim.loss_weighting=answer"])
