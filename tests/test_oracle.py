"""ActivationOracle: prompt layout, injection, ask/choose exactness, adapters and bad input."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

import activation_oracles as ao
from activation_oracles.adapters import tuner_layers
from activation_oracles.errors import (
    ActivationsMismatchError, AdapterError, AOError, ChoicesError, EmptyInputError, OracleNotAvailableError,
    PositionError, UnsafeFileError,
)
from activation_oracles.hooks import inject_residuals
from activation_oracles.prompt import answer_ids, build_prompt
from activation_oracles.tiny import tiny_model

PROMPTS = ["Tell me about owls.", "The capital of France is Paris, a city of light and art."]


@pytest.fixture(scope="module")
def target():
    # A wider init than the default so a random model's greedy answers vary from token to token.
    return tiny_model(init_range=0.2)


@pytest.fixture(scope="module")
def acts(target):
    return ao.capture(target, PROMPTS, layers=2)


@pytest.fixture(scope="module")
def oracle(target):
    return ao.ActivationOracle.untrained(target)


def _lora_dir(tmp_path: Path, seed: int = 1, d_model: int = 64) -> tuple[Path, ao.Model]:
    from peft import LoraConfig, get_peft_model

    base = tiny_model(init_range=0.2, d_model=d_model)
    torch.manual_seed(seed)
    peft = get_peft_model(base.hf, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                              init_lora_weights=False))
    out = tmp_path / f"oracle_{seed}_{d_model}"
    peft.save_pretrained(out)
    ao.OracleConfig(base_model="tiny-llama", n_layers=base.n_layers, d_model=base.d_model).save(out / "oracle_config.json")
    return out, ao.as_model(peft, base.tokenizer)


# -- prompt layout ---------------------------------------------------------------------------------------

def test_prompt_layout(target):
    cfg = ao.OracleConfig(base_model="x", n_layers=4, d_model=64)
    p = build_prompt(target.tokenizer, cfg, layer=2, n_positions=5, question="What is it?")
    tok = target.tokenizer
    assert [p.input_ids[i] for i in p.positions] == [p.placeholder_id] * 5
    assert list(p.positions) == list(range(p.positions[0], p.positions[0] + 5))  # consecutive
    assert p.input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")  # chat template applied
    text = tok.decode(p.input_ids)
    assert "Layer: 2\n ? ? ? ? ? \nWhat is it?" in text
    assert p.input_ids.count(p.placeholder_id) == 5
    assert p.prefix_len == p.positions[-1] + 1
    ans = answer_ids(tok, cfg, p, 2, "What is it?", "Yes")
    assert tok.decode(ans) == "Yes<|im_end|>"


def test_placeholder_must_be_one_token(target):
    with pytest.raises(AdapterError, match="exactly one token"):
        ao.ActivationOracle.untrained(target, placeholder=" ??? placeholder")


# -- injection -------------------------------------------------------------------------------------------

def _prompt_logits(oracle, acts, question, inject=True):
    item = oracle._item(acts, question, None)
    ids = torch.tensor([item.prompt.input_ids])
    with torch.no_grad():
        if not inject:
            return oracle.model.hf(ids).logits
        with inject_residuals(oracle.model, 1, [list(item.prompt.positions)], [item.vectors_KD],
                              coeff=oracle.config.coeff):
            return oracle.model.hf(ids).logits


def test_injection_changes_output_and_coeff_zero_is_exact(oracle, acts):
    a = acts[0]
    plain = _prompt_logits(oracle, a, "What is it?", inject=False)
    injected = _prompt_logits(oracle, a, "What is it?")
    zero = _prompt_logits(oracle.with_config(coeff=0.0), a, "What is it?")
    assert torch.equal(zero, plain)
    assert (injected[0, -1] - plain[0, -1]).abs().max() > 1e-3
    lp_zero = oracle.with_config(coeff=0.0).choice_logprobs(a, "What is it?", ["Yes", "No"])
    lp_one = oracle.choice_logprobs(a, "What is it?", ["Yes", "No"])
    assert lp_zero != lp_one


# -- ask -------------------------------------------------------------------------------------------------

def test_ask_batched_equals_unbatched(oracle, acts):
    inputs = [acts[0], acts[1], acts[1].last(3), acts[0].token(4)]
    batched = oracle.ask(inputs, "What is it?", max_new_tokens=6)
    single = [oracle.ask(x, "What is it?", max_new_tokens=6) for x in inputs]
    assert batched == single
    assert all(isinstance(s, str) and s for s in single)
    assert len(set(single)) > 1  # different activations, different answers


def test_prefix_reuse_equals_recompute(oracle, acts):
    questions = ["What is it?", "Is this about a city?", "Describe the text in detail, please."]
    reused = oracle.ask(acts[1], questions, max_new_tokens=6)
    recomputed = oracle.ask(acts[1], questions, max_new_tokens=6, reuse_prefix=False)
    one_by_one = [oracle.ask(acts[1], q, max_new_tokens=6) for q in questions]
    assert reused == recomputed == one_by_one


def test_paired_lists_and_sampling_seed(oracle, acts):
    out = oracle.ask([acts[0], acts[1]], ["What?", "Why?"], max_new_tokens=4)
    assert len(out) == 2
    s1 = oracle.ask(acts[0], "What?", max_new_tokens=6, temperature=1.0, seed=3)
    s2 = oracle.ask(acts[0], "What?", max_new_tokens=6, temperature=1.0, seed=3)
    assert s1 == s2


def test_input_modes(oracle, acts):
    a = acts[0]
    per_token = oracle.ask_tokens(a.last(3), "What?", max_new_tokens=3)
    assert len(per_token) == 3
    assert per_token[0] == oracle.ask(a.token(a.positions[-3]), "What?", max_new_tokens=3)
    seg = oracle.ask_segment(a, "What?", -4, None, max_new_tokens=3)
    assert seg == oracle.ask(a.last(4), "What?", max_new_tokens=3)


# -- choose ----------------------------------------------------------------------------------------------

def test_choose_sums_to_one_and_matches_hand_computation(oracle, acts):
    a = acts[1].last(4)
    choices = ["Yes", "No", "Perhaps not"]
    probs = oracle.choose(a, "Is this about a city?", choices)
    assert set(probs) == set(choices)
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)

    # By hand: one unpadded forward per choice, summing answer-token log-probs.
    tok = oracle.model.tokenizer
    item = oracle._item(a, "Is this about a city?", None)
    scores = []
    for c in choices:
        ans = answer_ids(tok, oracle.config, item.prompt, a.layer, "Is this about a city?", c)
        ids = torch.tensor([list(item.prompt.input_ids) + ans])
        with torch.no_grad(), inject_residuals(oracle.model, 1, [list(item.prompt.positions)], [item.vectors_KD]):
            logits = oracle.model.hf(ids).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        n = len(item.prompt.input_ids)
        scores.append(sum(float(logp[n - 1 + j, t]) for j, t in enumerate(ans)))
    z = sum(math.exp(s) for s in scores)
    for c, s in zip(choices, scores):
        assert probs[c] == pytest.approx(math.exp(s) / z, abs=1e-5)


def test_choose_batched_equals_single(oracle, acts):
    many = oracle.choose([acts[0], acts[1]], "Is it a city?", ["Yes", "No"])
    one = [oracle.choose(x, "Is it a city?", ["Yes", "No"]) for x in acts]
    for m, o in zip(many, one):
        for k in m:
            assert m[k] == pytest.approx(o[k], abs=1e-5)


# -- activations and adapter round trips ----------------------------------------------------------------

def test_activations_save_load_same_answers(oracle, acts, tmp_path):
    path = acts[0].save(tmp_path / "a.safetensors")
    loaded = ao.Activations.load(path)
    assert oracle.ask(loaded, "What?", max_new_tokens=5) == oracle.ask(acts[0], "What?", max_new_tokens=5)
    assert oracle.choose(loaded, "Q?", ["Yes", "No"]) == oracle.choose(acts[0], "Q?", ["Yes", "No"])


def test_adapter_round_trip_and_shared_base(tmp_path, acts):
    folder, in_memory = _lora_dir(tmp_path)
    reference = ao.ActivationOracle(in_memory, ao.OracleConfig(base_model="tiny-llama", n_layers=4, d_model=64),
                                    adapter="default")
    base = tiny_model(init_range=0.2)
    before = ao.capture(base, PROMPTS[0], layers=2)
    loaded = ao.load_oracle(folder, base=base)
    assert loaded.choose(acts[0], "Is it?", ["Yes", "No"]) == pytest.approx(
        reference.choose(acts[0], "Is it?", ["Yes", "No"]))
    assert loaded.ask(acts[0], "What?", max_new_tokens=5) == reference.ask(acts[0], "What?", max_new_tokens=5)
    # The shared base still behaves as the base model outside oracle calls.
    after = ao.capture(base, PROMPTS[0], layers=2)
    assert torch.equal(before.vectors[2], after.vectors[2])
    # And the untrained oracle on the same object ignores the adapter.
    untrained = ao.ActivationOracle.untrained(base)
    fresh = ao.ActivationOracle.untrained(tiny_model(init_range=0.2))
    # (equal up to float noise: the parked LoRA layers route the same matmuls through other kernels)
    got, want = untrained.choose(acts[0], "Is it?", ["Yes", "No"]), fresh.choose(acts[0], "Is it?", ["Yes", "No"])
    assert got == pytest.approx(want, abs=1e-6)
    assert untrained.choose(acts[0], "Is it?", ["Yes", "No"]) != pytest.approx(
        loaded.choose(acts[0], "Is it?", ["Yes", "No"]), abs=1e-6)  # and the adapter does matter


def test_shipped_oracle_missing_or_present():
    from activation_oracles.loading import shipped_oracle_dir

    if (shipped_oracle_dir("smollm2-135m") / "oracle_config.json").is_file():
        pytest.skip("the shipped oracle is installed; covered by its own tests")
    with pytest.raises(OracleNotAvailableError, match="ao train"):
        ao.load_oracle("smollm2-135m")


# -- bad input -------------------------------------------------------------------------------------------

def _assert_untouched(model):
    assert not tuner_layers(model.hf)


def test_adapter_for_another_base_model(tmp_path):
    folder, _ = _lora_dir(tmp_path, d_model=32)
    base = tiny_model(init_range=0.2)
    with pytest.raises(AdapterError, match="another base model|trained on"):
        ao.load_oracle(folder, base=base)
    _assert_untouched(base)


def test_adapter_shapes_checked_even_if_config_agrees(tmp_path):
    folder, _ = _lora_dir(tmp_path, d_model=32)
    ao.OracleConfig(base_model="tiny-llama", n_layers=4, d_model=0).save(folder / "oracle_config.json")
    base = tiny_model(init_range=0.2)
    with pytest.raises(AdapterError, match="another base model"):
        ao.load_oracle(folder, base=base)
    _assert_untouched(base)


def test_missing_adapter_file(tmp_path):
    folder, _ = _lora_dir(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    base = tiny_model()
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        ao.load_oracle(folder, base=base)
    _assert_untouched(base)


def test_truncated_adapter_file(tmp_path):
    folder, _ = _lora_dir(tmp_path)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    base = tiny_model()
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        ao.load_oracle(folder, base=base)
    _assert_untouched(base)


def test_pickle_adapter_refused(tmp_path):
    folder, _ = _lora_dir(tmp_path)
    (folder / "adapter_model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    torch.save({"x": torch.zeros(1)}, folder / "adapter_model.bin")
    base = tiny_model()
    with pytest.raises(UnsafeFileError, match="pickle"):
        ao.load_oracle(folder, base=base)
    assert not marker.exists()
    _assert_untouched(base)


def test_pickle_disguised_as_safetensors_refused(tmp_path):
    folder, _ = _lora_dir(tmp_path)
    torch.save({"x": torch.zeros(1)}, folder / "adapter_model.safetensors")
    with pytest.raises(UnsafeFileError):
        ao.load_oracle(folder, base=tiny_model())


def test_pickle_as_activations_refused(tmp_path):
    path = tmp_path / "acts.safetensors"
    torch.save({"layer_2": torch.zeros(3, 64)}, path)
    with pytest.raises(UnsafeFileError):
        ao.Activations.load(path)


def test_empty_question(oracle, acts):
    with pytest.raises(EmptyInputError):
        oracle.ask(acts[0], "   ")
    with pytest.raises(EmptyInputError):
        oracle.choose(acts[0], "", ["Yes", "No"])


def test_zero_positions(oracle, acts):
    with pytest.raises(PositionError):
        oracle.ask(acts[0].segment(3, 3), "What?")


def test_more_positions_than_cap(target, acts):
    capped = ao.ActivationOracle.untrained(target, max_positions=4)
    with pytest.raises(PositionError, match="cap of 4"):
        capped.ask(acts[0].last(5), "What?")
    assert capped.ask(acts[0].last(4), "What?", max_new_tokens=2) is not None


def test_activations_with_another_d_model(oracle):
    other = tiny_model(d_model=32)
    acts32 = ao.capture(other, "hello there", layers=1)
    with pytest.raises(ActivationsMismatchError, match="d_model=32"):
        oracle.ask(acts32, "What?")
    with pytest.raises(ActivationsMismatchError):
        oracle.choose(acts32, "What?", ["Yes", "No"])


@pytest.mark.parametrize("choices", [[], ["Yes"], ["Yes", "Yes"], ["Yes", ""], "Yes"])
def test_bad_choices(oracle, acts, choices):
    with pytest.raises(ChoicesError) as info:
        oracle.choose(acts[0], "Q?", choices)
    assert isinstance(info.value, (AOError, ValueError))


def test_no_hooks_left_after_errors(oracle, acts):
    with pytest.raises(ChoicesError):
        oracle.choose(acts[0], "Q?", ["A", "A"])
    oracle.ask(acts[0], "What?", max_new_tokens=2)
    for module in oracle.model.hf.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


# -- the embedded model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_untrained_oracle_on_embedded_model():
    target = ao.load_model("smollm2-135m")
    acts = ao.capture(target, ["I absolutely love this movie!", "The weather is awful today."], layer_percent=50)
    oracle = ao.ActivationOracle.untrained(target)
    answers = oracle.ask(acts, "Is the sentiment positive?", max_new_tokens=10)
    assert answers == [oracle.ask(a, "Is the sentiment positive?", max_new_tokens=10) for a in acts]
    assert all(a.strip() for a in answers)
    probs = oracle.choose(acts[0], "Is the sentiment positive?", ["Yes", "No"])
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
    qs = ["What is this about?", "Is the sentiment positive?"]
    assert oracle.ask(acts[0], qs, max_new_tokens=8) == oracle.ask(acts[0], qs, max_new_tokens=8, reuse_prefix=False)
