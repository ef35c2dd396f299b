"""``ao.capture``: prompt in, Activations out, equal to what the hooks record by hand."""

from __future__ import annotations

import pytest
import torch

import activation_oracles as ao
from activation_oracles.capturing import render
from activation_oracles.hooks import capture_residuals

PROMPT = "Tell me about owls."


def _by_hand(model, ids, layers):
    with torch.no_grad(), capture_residuals(model, layers) as cache:
        model.hf(input_ids=torch.tensor([ids]))
    return cache


def test_single_prompt_gives_activations(tiny):
    acts = ao.capture(tiny, PROMPT)
    assert isinstance(acts, ao.Activations)
    assert acts.layer == tiny.layer_at(50) == 2
    assert acts.model_name == "tiny-llama" and acts.n_layers == 4 and acts.d_model == 64
    assert len(acts) == len(acts.token_ids) == len(acts.tokens)
    assert acts.positions == tuple(range(len(acts.token_ids)))
    assert acts.vectors[2].shape == (len(acts.token_ids), 64) and acts.vectors[2].dtype == torch.float32
    assert list(acts.tokens) == tiny.tokenizer.convert_ids_to_tokens(list(acts.token_ids))


def test_capture_equals_hooks_result(tiny):
    acts = ao.capture(tiny, PROMPT, layers=[0, 3])
    ids = render(tiny, PROMPT)
    assert list(acts.token_ids) == ids
    cache = _by_hand(tiny, ids, [0, 3])
    for layer in (0, 3):
        assert torch.equal(acts.vectors[layer], cache[layer][0])


def test_capture_equals_output_hidden_states(tiny):
    acts = ao.capture(tiny, PROMPT, layers=1, chat=False)
    with torch.no_grad():
        hidden = tiny.hf(input_ids=torch.tensor([acts.token_ids]), output_hidden_states=True).hidden_states
    assert torch.equal(acts.vectors[1], hidden[2][0])


def test_list_of_prompts_equals_single_captures(tiny):
    prompts = [PROMPT, "Hi", [{"role": "user", "content": "What is 2 + 2?"}], "A much longer prompt " * 3]
    batch = ao.capture(tiny, prompts, layers=[1, 3], positions="last:2")
    assert isinstance(batch, list) and len(batch) == len(prompts)
    for prompt, acts in zip(prompts, batch):
        single = ao.capture(tiny, prompt, layers=[1, 3], positions="last:2")
        assert acts.token_ids == single.token_ids and acts.positions == single.positions
        for layer in (1, 3):
            torch.testing.assert_close(acts.vectors[layer], single.vectors[layer], rtol=0, atol=1e-5)


def test_batch_size_does_not_change_results(tiny):
    prompts = ["one", "two three", "four five six seven"]
    a = ao.capture(tiny, prompts, layers=2, batch_size=1)
    b = ao.capture(tiny, prompts, layers=2, batch_size=3)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.vectors[2], y.vectors[2], rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec,expected", [
    ("all", lambda n: list(range(n))),
    ("last:3", lambda n: [n - 3, n - 2, n - 1]),
    ("2:5", lambda n: [2, 3, 4]),
    (4, lambda n: [4]),
    (-1, lambda n: [n - 1]),
    ([0, 3, -2], lambda n: [0, 3, n - 2]),
])
def test_position_specs(tiny, spec, expected):
    full = ao.capture(tiny, PROMPT, layers=2)
    n = len(full.token_ids)
    acts = ao.capture(tiny, PROMPT, layers=2, positions=spec)
    assert list(acts.positions) == expected(n)
    assert torch.equal(acts.vectors[2], full.vectors[2][expected(n)])
    assert acts.token_ids == full.token_ids


def test_layer_percent(tiny):
    acts = ao.capture(tiny, PROMPT, layer_percent=[25, 75])
    assert acts.layers == (1, 3)


def test_chat_template_applied(tiny):
    acts = ao.capture(tiny, PROMPT)
    tok = tiny.tokenizer
    templated = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                        add_generation_prompt=True)
    first = tok(templated, add_special_tokens=False)["input_ids"][0]
    assert acts.token_ids[0] == first and acts.tokens[0] == "<|im_start|>"
    assert list(acts.token_ids) == tok(templated, add_special_tokens=False)["input_ids"]
    # the generation prompt (assistant header) closes the context
    assert tok.decode(list(acts.token_ids)).endswith("<|im_start|>assistant\n")


def test_chat_false_uses_raw_text(tiny):
    acts = ao.capture(tiny, PROMPT, chat=False)
    assert acts.tokens[0] != "<|im_start|>"
    assert tiny.tokenizer.decode(list(acts.token_ids)) == PROMPT


def test_messages_with_system_turn(tiny):
    messages = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}]
    acts = ao.capture(tiny, messages)
    text = tiny.tokenizer.decode(list(acts.token_ids))
    assert "You are a pirate." in text and "Hello" in text and "helpful AI assistant" not in text


def test_capture_accepts_a_bare_hf_model_via_as_model(tiny):
    acts = ao.capture(ao.as_model(tiny.hf, tiny.tokenizer), PROMPT, layers=1)
    assert torch.equal(acts.vectors[1], ao.capture(tiny, PROMPT, layers=1).vectors[1])


def test_capture_leaves_no_hooks(tiny, hooks_of):
    ao.capture(tiny, [PROMPT, "Hi"], layers=[0, 2])
    assert hooks_of(tiny) == frozenset()


@pytest.mark.slow
def test_embedded_capture(smollm):
    acts = ao.capture(smollm, PROMPT, layer_percent=50, positions="last:4")
    assert acts.layer == 15 and acts.vectors[15].shape == (4, 576)
    assert acts.tokens[0] == "<|im_start|>" and acts.model_name == "smollm2-135m"
    with torch.no_grad():
        hidden = smollm.hf(input_ids=torch.tensor([acts.token_ids]), output_hidden_states=True).hidden_states
    assert torch.equal(acts.vectors[15], hidden[16][0, list(acts.positions)])


def test_ao_capture_stays_callable_after_importing_the_submodule(tiny):
    """The helper lives in ``activation_oracles.capturing`` so importing that submodule can never
    shadow the lazily exported ``ao.capture`` function."""
    import importlib

    importlib.import_module("activation_oracles.capturing")
    assert callable(ao.capture)
    acts = ao.capture(tiny, PROMPT, layers=1, positions="last:1")
    assert isinstance(acts, ao.Activations) and len(acts) == 1
