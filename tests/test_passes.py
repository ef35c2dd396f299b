"""The step's two passes as parts (training/passes.py), run without a trainer, against independent answers."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

import activation_oracles as ao
from activation_oracles.training.batching import prepare
from activation_oracles.training.example import TrainingExample
from activation_oracles.training.passes import OracleLoss, TargetReader
from activation_oracles.training.steps import make_step_input

TEXTS = ["The owl hunts mice in the quiet forest at night.", "A red car stopped.", "Bees collect nectar in spring."]
CPU = torch.device("cpu")


def _examples(tok) -> list[TrainingExample]:
    out = []
    for i, text in enumerate(TEXTS):
        ids = tuple(tok(text, add_special_tokens=False)["input_ids"])
        positions = (len(ids) - 1,) if i % 2 else tuple(range(len(ids) - 3, len(ids)))
        out.append(TrainingExample(ids, positions, 50.0, "Is this about an animal?", "No" if i == 1 else "Yes", "t"))
    return out


def test_target_reader_returns_the_models_own_hidden_states(tiny):
    tok, cfg = tiny.tokenizer, ao.ActivationOracle.untrained(tiny).config
    examples = _examples(tok)
    step = make_step_input(examples, lambda ex: prepare(ex, tok, cfg, tiny.n_layers), tok.pad_token_id or 0)
    reader = TargetReader(tiny, device=CPU, autocast=nullcontext, transform=lambda v, layer: v * 2)
    layer = tiny.layer_at(50)
    seen = 0
    for mb in step.micro:
        for item, vec in zip(mb.items, reader(mb)):
            with torch.no_grad():  # hidden_states[L + 1] is block L's output, computed without any hook
                hs = tiny.hf(input_ids=torch.tensor([list(item.context_ids)]), output_hidden_states=True)
            want = hs.hidden_states[layer + 1][0, list(item.positions)] * 2  # the transform is applied
            torch.testing.assert_close(vec, want, rtol=1e-4, atol=1e-4)
            seen += 1
    assert seen == len(examples)


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_oracle_loss_is_minus_chooses_logprob(tiny, index):
    oracle = ao.ActivationOracle.untrained(tiny)
    tok, cfg = tiny.tokenizer, oracle.config
    ex = _examples(tok)[index]
    step = make_step_input([ex], lambda e: prepare(e, tok, cfg, tiny.n_layers), tok.pad_token_id or 0)
    reader = TargetReader(tiny, device=CPU, autocast=nullcontext, transform=cfg.centre)
    loss = OracleLoss(tiny, tiny.hf, injection_layer=cfg.injection_layer, config=lambda: cfg, device=CPU,
                      autocast=nullcontext)
    (mb,) = step.micro
    with torch.no_grad():
        token_sum, example_sum = loss(mb, reader(mb))
    acts = ao.capture(tiny, tok.decode(list(ex.context_ids)), chat=False, layers=tiny.layer_at(50),
                      positions=list(ex.positions))
    assert list(acts.token_ids) == list(ex.context_ids)
    logp = oracle.choice_logprobs(acts, ex.question, ["Yes", "No"])
    assert token_sum.item() == pytest.approx(-logp[ex.answer], abs=1e-4)
    assert example_sum.item() == pytest.approx(token_sum.item() / mb.items[0].n_answer, rel=1e-5)
