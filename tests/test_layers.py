"""Structural layer discovery on real transformers architectures, bare and PEFT-wrapped."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
import torch.nn as nn

import activation_oracles as ao
from activation_oracles.errors import AOError, LayerDiscoveryError, NotDecoderLMError
from activation_oracles.layers import config_layer_count, find_decoder_layers

from conftest import TINY_ARCH_LAYERS_PATH, TINY_ARCHS

ARCHS = sorted(TINY_ARCHS)


def _expected_blocks(model: nn.Module, name: str) -> nn.ModuleList:
    """The decoder-block list, found by the tests' own answer key (not by the library)."""
    obj = model
    for part in TINY_ARCH_LAYERS_PATH.get(name, "model.layers").split("."):
        obj = getattr(obj, part)
    return obj


def _lora(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # GPT-2's Conv1D makes PEFT warn about fan_in_fan_out
        warnings.simplefilter("ignore")
        return peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))


def test_at_least_ten_architectures():
    assert len(ARCHS) >= 10


@pytest.mark.parametrize("name", ARCHS)
def test_discovery_finds_the_decoder_blocks(name, build_arch):
    model = build_arch(name)
    path, blocks = find_decoder_layers(model)
    assert len(blocks) == config_layer_count(model) == 3
    assert blocks is _expected_blocks(model, name)
    assert path == TINY_ARCH_LAYERS_PATH.get(name, "model.layers")
    wrapped = ao.as_model(model)
    assert wrapped.layers is blocks and wrapped.n_layers == 3 and wrapped.d_model == 16


@pytest.mark.parametrize("name", ARCHS)
def test_discovery_through_peft_lora(name, build_arch):
    model = build_arch(name)
    expected = _expected_blocks(model, name)
    lora = _lora(model)
    path, blocks = find_decoder_layers(lora)
    assert blocks is expected and len(blocks) == 3
    assert path.startswith("base_model.model.") and path.endswith(TINY_ARCH_LAYERS_PATH.get(name, "model.layers"))
    # LoRA layers really are inside the blocks we found.
    assert any("lora_A" in n for n, _ in blocks[0].named_modules())
    wrapped = ao.as_model(lora)
    assert wrapped.layers is expected and wrapped.n_layers == 3 and wrapped.d_model == 16


def test_layers_path_override_is_followed(build_arch):
    model = build_arch("llama")
    path, blocks = find_decoder_layers(model, layers_path="model.layers")
    assert path == "model.layers" and blocks is model.model.layers
    m = ao.as_model(model, layers_path="model.layers")
    assert m.layers is model.model.layers and m.layers_path == "model.layers"


def test_layers_path_override_chooses_another_stack():
    class TwoStacks(nn.Module):
        def __init__(self):
            super().__init__()
            self.big = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
            self.small = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))

    model = TwoStacks()
    assert find_decoder_layers(model)[1] is model.big  # no config: the stack with most parameters
    assert find_decoder_layers(model, layers_path="small")[1] is model.small


@pytest.mark.parametrize("bad_path", ["model.nope", "model.layers.0", "model.norm"])
def test_bad_layers_path_raises(build_arch, bad_path):
    model = build_arch("llama")
    with pytest.raises(LayerDiscoveryError) as err:
        find_decoder_layers(model, layers_path=bad_path)
    assert "layers_path" in str(err.value) and bad_path in str(err.value)
    assert isinstance(err.value, AOError) and isinstance(err.value, LookupError)


def test_unknown_layout_without_module_list_says_how_to_pass_layers_path():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

    with pytest.raises(LayerDiscoveryError) as err:
        find_decoder_layers(Flat())
    assert "layers_path" in str(err.value)
    assert isinstance(err.value, AOError)


def test_config_and_module_list_mismatch_raises(build_arch):
    model = build_arch("llama")
    model.config.num_hidden_layers = 5  # the config no longer describes the stack
    with pytest.raises(LayerDiscoveryError) as err:
        ao.as_model(model)
    message = str(err.value)
    assert "layers_path" in message and "5" in message and "3" in message
    # The override resolves it.
    assert ao.as_model(model, layers_path="model.layers").n_layers == 3


def test_heterogeneous_module_list_is_not_a_decoder_stack():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = nn.ModuleList([nn.Linear(2, 2), nn.Conv1d(2, 2, 1)])

    with pytest.raises(LayerDiscoveryError, match="layers_path"):
        find_decoder_layers(Mixed())


def _tiny_bert_mlm():
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=64))


def _tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8,
                                               vocab_size=64))


def _tiny_llama_backbone():
    from transformers import AutoConfig, AutoModel

    return AutoModel.from_config(AutoConfig.for_model("llama", **TINY_ARCHS["llama"]))


@pytest.mark.parametrize("make", [_tiny_bert_mlm, _tiny_t5, _tiny_llama_backbone, lambda: nn.Linear(4, 4),
                                  lambda: "not a model"],
                         ids=["bert-mlm", "t5", "llama-without-lm-head", "nn.Linear", "str"])
def test_as_model_rejects_non_decoder_lms(make):
    with pytest.raises(NotDecoderLMError) as err:
        ao.as_model(make())
    assert isinstance(err.value, AOError) and isinstance(err.value, TypeError)
    assert "decoder-only" in str(err.value)


def test_as_model_passes_a_model_through(build_arch):
    m = ao.as_model(build_arch("qwen2"))
    assert ao.as_model(m) is m


def test_discovered_blocks_are_the_ones_the_forward_pass_runs(build_arch):
    """Calling the model runs every found block once, in order (they are the real stack)."""
    model = build_arch("gemma2")
    blocks = find_decoder_layers(model)[1]
    order: list[int] = []
    handles = [b.register_forward_pre_hook(lambda mod, args, i=i: order.append(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
    finally:
        for h in handles:
            h.remove()
    assert order == [0, 1, 2]
