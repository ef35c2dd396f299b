"""``oracle.ask`` / ``choose`` / ``choice_logprobs`` / ``with_config`` on bad input.

Every case fails before the first forward pass: the oracle's model carries no hook afterwards
and computes the same logits (no adapter or injection left switched on).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import activation_oracles as ao
from activation_oracles import errors as E

from _support import expect, logits, small_model

Q = "What is it?"


@pytest.fixture(scope="module")
def model(embedded_tokenizer: Any) -> Any:
    return small_model(embedded_tokenizer, positions=256)


@pytest.fixture(scope="module")
def oracle(model: Any) -> Any:
    return ao.ActivationOracle.untrained(model)


@pytest.fixture(scope="module")
def acts(model: Any) -> Any:
    return ao.capture(model, "Owls hunt at night.", layers=1, positions="last:3")


@pytest.fixture(scope="module")
def reference(model: Any) -> torch.Tensor:
    return logits(model)


def _other(acts: Any, **kw: Any) -> Any:
    from dataclasses import replace

    return replace(acts, **kw)


def _wide(acts: Any) -> Any:  # activations of a wider model (d_model 48)
    return ao.Activations({1: torch.ones(3, 48)}, positions=acts.positions, token_ids=acts.token_ids,
                          tokens=acts.tokens, model_name="wide", n_layers=2, d_model=48)


def _many(n: int) -> Any:  # n positions: with the question, more tokens than the model's 256 positions
    return ao.Activations({1: torch.randn(n, 32)}, positions=tuple(range(n)), token_ids=tuple([42] * n),
                          tokens=tuple(["x"] * n), model_name="tiny-llama", n_layers=2, d_model=32)


# (id, call(oracle, acts) -> result, error, needle)
ASK = [
    ("max-new-tokens-0", lambda o, a: o.ask(a, Q, max_new_tokens=0), E.ArgumentError, "max_new_tokens=0"),
    ("max-new-tokens-negative", lambda o, a: o.ask(a, Q, max_new_tokens=-5), E.ArgumentError, "max_new_tokens=-5"),
    ("max-new-tokens-float", lambda o, a: o.ask(a, Q, max_new_tokens=2.5), E.ArgumentTypeError, "2.5"),
    ("max-new-tokens-str", lambda o, a: o.ask(a, Q, max_new_tokens="8"), E.ArgumentTypeError, "'8'"),
    ("max-new-tokens-None", lambda o, a: o.ask(a, Q, max_new_tokens=None), E.ArgumentTypeError, "None"),
    ("max-new-tokens-bool", lambda o, a: o.ask(a, Q, max_new_tokens=True), E.ArgumentTypeError, "True"),
    ("max-new-tokens-past-positions", lambda o, a: o.ask(a, Q, max_new_tokens=1000), E.PromptTooLongError,
     "max_new_tokens=1000"),
    ("temperature-nan", lambda o, a: o.ask(a, Q, temperature=float("nan")), E.ArgumentError, "nan"),
    ("temperature-inf", lambda o, a: o.ask(a, Q, temperature=float("inf")), E.ArgumentError, "inf"),
    ("temperature-negative", lambda o, a: o.ask(a, Q, temperature=-1), E.ArgumentError, "temperature=-1"),
    ("temperature-str", lambda o, a: o.ask(a, Q, temperature="0.7"), E.ArgumentTypeError, "'0.7'"),
    ("temperature-None", lambda o, a: o.ask(a, Q, temperature=None), E.ArgumentTypeError, "None"),
    ("temperature-complex", lambda o, a: o.ask(a, Q, temperature=1j), E.ArgumentTypeError, "1j"),
    ("generate-kwargs-bogus", lambda o, a: o.ask(a, Q, generate_kwargs={"bogus": 1}), E.ArgumentError, "'bogus'"),
    ("generate-kwargs-typo", lambda o, a: o.ask(a, Q, generate_kwargs={"min_new_tokenz": 2}), E.ArgumentError,
     "'min_new_tokenz'"),
    ("generate-kwargs-int-key", lambda o, a: o.ask(a, Q, generate_kwargs={1: 2}), E.ArgumentError, "[1]"),
    ("generate-kwargs-private", lambda o, a: o.ask(a, Q, generate_kwargs={"_from_model_config": 1}), E.ArgumentError,
     "'_from_model_config'"),
    ("generate-kwargs-input-ids", lambda o, a: o.ask(a, Q, generate_kwargs={"input_ids": None}), E.ArgumentError,
     "'input_ids'"),
    ("generate-kwargs-mask", lambda o, a: o.ask(a, Q, generate_kwargs={"attention_mask": None}), E.ArgumentError,
     "'attention_mask'"),
    ("generate-kwargs-cache", lambda o, a: o.ask(a, Q, generate_kwargs={"past_key_values": None}), E.ArgumentError,
     "'past_key_values'"),
    ("generate-kwargs-max-new", lambda o, a: o.ask(a, Q, generate_kwargs={"max_new_tokens": 0}), E.ArgumentError,
     "'max_new_tokens'"),
    ("generate-kwargs-temperature", lambda o, a: o.ask(a, Q, generate_kwargs={"temperature": 2}), E.ArgumentError,
     "'temperature'"),
    ("generate-kwargs-list", lambda o, a: o.ask(a, Q, generate_kwargs=[("top_k", 1)]), E.ArgumentTypeError, "list"),
    ("generate-kwargs-str", lambda o, a: o.ask(a, Q, generate_kwargs="top_k=1"), E.ArgumentTypeError, "'top_k=1'"),
    ("seed-str", lambda o, a: o.ask(a, Q, seed="a"), E.ArgumentTypeError, "'a'"),
    ("seed-float", lambda o, a: o.ask(a, Q, seed=1.5), E.ArgumentTypeError, "1.5"),
    ("seed-bool", lambda o, a: o.ask(a, Q, seed=True), E.ArgumentTypeError, "True"),
    ("batch-0", lambda o, a: o.ask([a, a], Q, batch_size=0), E.ArgumentError, "batch_size=0"),
    ("batch-negative", lambda o, a: o.ask([a, a], Q, batch_size=-2), E.ArgumentError, "batch_size=-2"),
    ("batch-float", lambda o, a: o.ask(a, Q, batch_size=2.0), E.ArgumentTypeError, "2.0"),
    ("layer-str", lambda o, a: o.ask(a, Q, layer="1"), E.ArgumentTypeError, "'1'"),
    ("layer-float", lambda o, a: o.ask(a, Q, layer=1.0), E.ArgumentTypeError, "1.0"),
    ("layer-not-captured", lambda o, a: o.ask(a, Q, layer=0), E.ActivationsMismatchError, "layer 0"),
    ("reuse-prefix-str", lambda o, a: o.ask(a, Q, reuse_prefix="no"), E.ArgumentTypeError, "'no'"),
    ("reuse-prefix-int", lambda o, a: o.ask(a, Q, reuse_prefix=0), E.ArgumentTypeError, "=0"),
    ("acts-None", lambda o, a: o.ask(None, Q), E.ActivationsMismatchError, "NoneType"),
    ("acts-str", lambda o, a: o.ask("acts.safetensors", Q), E.ActivationsMismatchError, "'acts.safetensors'"),
    ("acts-tensor", lambda o, a: o.ask(torch.ones(3, 32), Q), E.ActivationsMismatchError, "Tensor"),
    ("acts-dict", lambda o, a: o.ask({1: torch.ones(3, 32)}, Q), E.ActivationsMismatchError, "dict"),
    ("acts-empty-list", lambda o, a: o.ask([], Q), E.PositionError, "empty"),
    ("acts-list-with-None", lambda o, a: o.ask([a, None], Q), E.ActivationsMismatchError, "acts[1]"),
    ("acts-list-with-tensor", lambda o, a: o.ask([a, torch.ones(1)], Q), E.ActivationsMismatchError, "acts[1]"),
    ("acts-other-width", lambda o, a: o.ask(_wide(a), Q), E.ActivationsMismatchError, "d_model=48"),
    ("acts-two-layers", lambda o, a: o.ask(_other(a, vectors={0: a.vectors[1], 1: a.vectors[1]}), Q),
     E.ActivationsMismatchError, "(0, 1)"),
    ("acts-too-many-positions", lambda o, a: o.ask(_many(600), Q), E.PositionError, "600"),
    ("prompt-past-positions", lambda o, a: o.ask(_many(300), Q), E.PromptTooLongError, "256 positions"),
    ("question-None", lambda o, a: o.ask(a, None), E.ArgumentTypeError, "None"),
    ("question-int", lambda o, a: o.ask(a, 5), E.ArgumentTypeError, "question=5"),
    ("question-bytes", lambda o, a: o.ask(a, b"What?"), E.ArgumentTypeError, "b'What?'"),
    ("question-empty", lambda o, a: o.ask(a, ""), E.EmptyInputError, "''"),
    ("question-blank", lambda o, a: o.ask(a, " \n "), E.EmptyInputError, "' \\n '"),
    ("question-surrogate", lambda o, a: o.ask(a, "What\ud800?"), E.PromptError, "\\ud800"),
    ("questions-empty-list", lambda o, a: o.ask(a, []), E.EmptyInputError, "empty"),
    ("questions-list-with-int", lambda o, a: o.ask(a, [Q, 3]), E.ArgumentTypeError, "question=3"),
    ("questions-list-with-blank", lambda o, a: o.ask(a, [Q, ""]), E.EmptyInputError, "''"),
    ("paired-unequal", lambda o, a: o.ask([a, a], [Q, Q, Q]), E.EmptyInputError, "2 activation sets and 3"),
    ("ask-segment-bad-start", lambda o, a: o.ask_segment(a, Q, "0"), E.ArgumentTypeError, "'0'"),
    ("ask-segment-empty", lambda o, a: o.ask_segment(a, Q, 0, 1), E.PositionError, "zero positions"),
    ("ask-tokens-bad-kwarg", lambda o, a: o.ask_tokens(a, Q, max_new_tokens=0), E.ArgumentError, "max_new_tokens=0"),
]

CHOOSE = [
    ("choices-None", lambda o, a: o.choose(a, Q, None), E.ChoicesError, "None"),
    ("choices-str", lambda o, a: o.choose(a, Q, "Yes"), E.ChoicesError, "'Yes'"),
    ("choices-one", lambda o, a: o.choose(a, Q, ["Yes"]), E.ChoicesError, "['Yes']"),
    ("choices-empty", lambda o, a: o.choose(a, Q, []), E.ChoicesError, "[]"),
    ("choices-duplicate", lambda o, a: o.choose(a, Q, ["Yes", "Yes"]), E.ChoicesError, "['Yes']"),
    ("choices-blank", lambda o, a: o.choose(a, Q, ["Yes", " "]), E.ChoicesError, "' '"),
    ("choices-int", lambda o, a: o.choose(a, Q, ["Yes", 1]), E.ChoicesError, "1"),
    ("choices-None-entry", lambda o, a: o.choose(a, Q, ["Yes", None]), E.ChoicesError, "None"),
    ("choices-set", lambda o, a: o.choose(a, Q, {"Yes", "No"}), E.ChoicesError, "set"),
    ("choices-dict", lambda o, a: o.choose(a, Q, {"Yes": 1, "No": 0}), E.ChoicesError, "dict"),
    ("choices-surrogate", lambda o, a: o.choose(a, Q, ["Yes", "N\udc80"]), E.PromptError, "\\udc80"),
    ("choose-batch-0", lambda o, a: o.choose(a, Q, ["Yes", "No"], batch_size=0), E.ArgumentError, "batch_size=0"),
    ("choose-batch-str", lambda o, a: o.choose(a, Q, ["Yes", "No"], batch_size="4"), E.ArgumentTypeError, "'4'"),
    ("choose-layer-str", lambda o, a: o.choose(a, Q, ["Yes", "No"], layer="1"), E.ArgumentTypeError, "'1'"),
    ("choose-layer-missing", lambda o, a: o.choose(a, Q, ["Yes", "No"], layer=0), E.ActivationsMismatchError,
     "layer 0"),
    ("choose-acts-None", lambda o, a: o.choose(None, Q, ["Yes", "No"]), E.ActivationsMismatchError, "NoneType"),
    ("choose-acts-list-bad", lambda o, a: o.choose([a, "x"], Q, ["Yes", "No"]), E.ActivationsMismatchError,
     "acts[1]"),
    ("choose-question-None", lambda o, a: o.choose(a, None, ["Yes", "No"]), E.ArgumentTypeError, "None"),
    ("choose-question-empty", lambda o, a: o.choose(a, "", ["Yes", "No"]), E.EmptyInputError, "''"),
    ("choose-other-width", lambda o, a: o.choose(_wide(a), Q, ["Yes", "No"]), E.ActivationsMismatchError,
     "d_model=48"),
    ("choose-past-positions", lambda o, a: o.choose(_many(300), Q, ["Yes", "No"]), E.PromptTooLongError,
     "256 positions"),
    ("choose-long-choice-past-positions", lambda o, a: o.choose(a, Q, ["Yes", "owl " * 300]), E.PromptTooLongError,
     "256 positions"),
    ("choose-tokens-bad-choices", lambda o, a: o.choose_tokens(a, Q, ["Yes"]), E.ChoicesError, "['Yes']"),
    ("logprobs-choices-str", lambda o, a: o.choice_logprobs(a, Q, "Yes"), E.ChoicesError, "'Yes'"),
    ("logprobs-acts-None", lambda o, a: o.choice_logprobs(None, Q, ["Yes", "No"]), E.ActivationsMismatchError,
     "NoneType"),
    ("logprobs-question-int", lambda o, a: o.choice_logprobs(a, 7, ["Yes", "No"]), E.ArgumentTypeError,
     "question=7"),
    ("logprobs-layer-float", lambda o, a: o.choice_logprobs(a, Q, ["Yes", "No"], layer=1.5), E.ArgumentTypeError,
     "1.5"),
]

CONFIG = [
    ("with-config-bogus", lambda o, a: o.with_config(bogus=1), E.ConfigError, "'bogus'"),
    ("with-config-typo", lambda o, a: o.with_config(coef=0.0), E.ConfigError, "'coef'"),
    ("with-config-coeff-nan", lambda o, a: o.with_config(coeff=float("nan")), E.ArgumentError, "coeff=nan"),
    ("with-config-coeff-inf", lambda o, a: o.with_config(coeff=float("inf")), E.ArgumentError, "coeff=inf"),
    ("with-config-coeff-str", lambda o, a: o.with_config(coeff="0"), E.ArgumentTypeError, "'0'"),
    ("with-config-coeff-None", lambda o, a: o.with_config(coeff=None), E.ArgumentTypeError, "None"),
    ("with-config-coeff-bool", lambda o, a: o.with_config(coeff=False), E.ArgumentTypeError, "False"),
    ("with-config-layer-99", lambda o, a: o.with_config(injection_layer=99), E.LayerNotFoundError, "99"),
    ("with-config-layer-negative", lambda o, a: o.with_config(injection_layer=-1), E.LayerNotFoundError, "-1"),
    ("with-config-layer-str", lambda o, a: o.with_config(injection_layer="1"), E.ArgumentTypeError, "'1'"),
    ("with-config-layer-float", lambda o, a: o.with_config(injection_layer=1.0), E.ArgumentTypeError, "1.0"),
    ("with-config-max-positions-0", lambda o, a: o.with_config(max_positions=0), E.ArgumentError, "max_positions=0"),
    ("with-config-max-positions-str", lambda o, a: o.with_config(max_positions="8"), E.ArgumentTypeError, "'8'"),
    ("with-config-mode", lambda o, a: o.with_config(mode="multiply"), E.ConfigError, "'multiply'"),
    ("with-config-mode-int", lambda o, a: o.with_config(mode=1), E.ArgumentTypeError, "mode=1"),
    ("with-config-placeholder-int", lambda o, a: o.with_config(placeholder=5), E.ArgumentTypeError, "placeholder=5"),
    ("with-config-placeholder-two-tokens", lambda o, a: o.with_config(placeholder=" owl owl"), E.AdapterError,
     "' owl owl'"),
    ("with-config-template", lambda o, a: o.with_config(prompt_template="{layer} {placeholders}"), E.ConfigError,
     "{question}"),
    ("with-config-template-None", lambda o, a: o.with_config(prompt_template=None), E.ArgumentTypeError, "None"),
    ("with-config-system-prompt-int", lambda o, a: o.with_config(system_prompt=3), E.ConfigError, "system_prompt=3"),
    ("untrained-bogus", lambda o, a: ao.ActivationOracle.untrained(o.model, bogus=1), E.ConfigError, "'bogus'"),
    ("untrained-base-model", lambda o, a: ao.ActivationOracle.untrained(o.model, base_model="x"), E.ConfigError,
     "'base_model'"),
    ("untrained-d-model", lambda o, a: ao.ActivationOracle.untrained(o.model, d_model=8), E.ConfigError, "'d_model'"),
    ("untrained-coeff-nan", lambda o, a: ao.ActivationOracle.untrained(o.model, coeff=float("nan")), E.ArgumentError,
     "nan"),
    ("untrained-not-a-model", lambda o, a: ao.ActivationOracle.untrained(None), E.NotDecoderLMError, "NoneType"),
]


@pytest.mark.parametrize("call, cls, needle", [pytest.param(*row[1:], id=row[0]) for row in ASK + CHOOSE + CONFIG])
def test_oracle_rejects(oracle: Any, acts: Any, model: Any, reference: torch.Tensor, call: Any, cls: type,
                        needle: str) -> None:
    expect(lambda: call(oracle, acts), cls, needle, model=model, reference=reference)


def test_good_calls_still_work(oracle: Any, acts: Any) -> None:
    assert isinstance(oracle.ask(acts, Q, max_new_tokens=1, generate_kwargs={"min_new_tokens": 1}), str)
    assert isinstance(oracle.ask(acts, Q, max_new_tokens=1, temperature=0.5, seed=1), str)
    probs = oracle.choose(acts, Q, ("Yes", "No"))
    assert abs(sum(probs.values()) - 1) < 1e-6
    assert oracle.with_config(coeff=0, injection_layer=0).config.coeff == 0
