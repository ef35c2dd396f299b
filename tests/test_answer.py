"""Open answers: a 64-token default budget, and a ``truncated`` flag telling a cut answer from an ended one."""

from __future__ import annotations

import inspect

import pytest

import activation_oracles as ao
from activation_oracles.answer import DEFAULT_MAX_NEW_TOKENS, Answer
from activation_oracles.prompt import end_of_turn_id
from activation_oracles.tiny import tiny_model


@pytest.fixture(scope="module")
def oracle_and_acts():
    target = tiny_model(init_range=0.2)  # a wide init: greedy answers vary, and rarely end by chance
    return ao.ActivationOracle.untrained(target), ao.capture(target, "Owls hunt at night.", layers=2)


def test_the_default_budget_is_64_and_documented() -> None:
    default = inspect.signature(ao.ActivationOracle.ask).parameters["max_new_tokens"].default
    assert default == DEFAULT_MAX_NEW_TOKENS == 64
    assert "default 64" in ao.ActivationOracle.ask.__doc__


def test_an_answer_still_going_at_the_budget_is_truncated(oracle_and_acts) -> None:
    oracle, acts = oracle_and_acts
    answer = oracle.ask(acts, "What is it?", max_new_tokens=3)
    assert isinstance(answer, Answer) and isinstance(answer, str)
    assert answer.truncated is True


def test_an_answer_the_oracle_ends_is_not_truncated_even_at_the_last_token(oracle_and_acts) -> None:
    oracle, acts = oracle_and_acts
    eot = end_of_turn_id(oracle.model.tokenizer)
    # forced_eos_token_id makes the budget's last token the end of turn: the answer ends exactly at the budget
    ended = oracle.ask(acts, "What is it?", max_new_tokens=3, generate_kwargs={"forced_eos_token_id": eot})
    cut = oracle.ask(acts, "What is it?", max_new_tokens=2)
    assert ended.truncated is False and cut.truncated is True
    assert ended == cut  # the same two tokens, once ended by the oracle, once cut by the budget


def test_batched_answers_carry_their_own_flags(oracle_and_acts) -> None:
    oracle, acts = oracle_and_acts
    answers = oracle.ask([acts, acts.last(2)], ["What?", "Why?"], max_new_tokens=2)
    assert [a.truncated for a in answers] == [True, True]
    assert answers == [oracle.ask(acts, "What?", max_new_tokens=2), oracle.ask(acts.last(2), "Why?",
                                                                               max_new_tokens=2)]
