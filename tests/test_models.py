"""Model loading: local directories, dtypes, depth helpers, and the embedded SmolLM2 default."""

from __future__ import annotations

import time

import pytest
import torch

import activation_oracles as ao
from activation_oracles.errors import LayerDiscoveryError, LayerNotFoundError
from activation_oracles.models import resolve_dtype

IDS = torch.tensor([[1, 17, 42, 5, 99]])


@pytest.fixture
def saved_tiny(tiny, tmp_path):
    """A tiny model and the embedded tokenizer saved as a plain transformers folder."""
    folder = tmp_path / "tiny-model"
    tiny.hf.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return tiny, folder


def test_load_local_directory(saved_tiny):
    original, folder = saved_tiny
    loaded = ao.load_model(folder)
    assert isinstance(loaded, ao.Model)
    assert (loaded.n_layers, loaded.d_model) == (original.n_layers, original.d_model) == (4, 64)
    assert loaded.layers is loaded.hf.model.layers and loaded.layers_path == "model.layers"
    assert loaded.dtype == torch.float32 and loaded.device == torch.device("cpu")
    assert not loaded.hf.training
    assert loaded.tokenizer.pad_token is not None
    assert loaded.tokenizer("hello owl")["input_ids"] == original.tokenizer("hello owl")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, original.hf(IDS).logits)
    assert ao.load_model(str(folder)).n_layers == 4  # str and Path both work
    assert loaded.name == str(folder)


@pytest.mark.parametrize("dtype", ["bf16", "bfloat16", torch.bfloat16])
def test_load_with_dtype(saved_tiny, dtype):
    _, folder = saved_tiny
    loaded = ao.load_model(folder, dtype=dtype)
    assert loaded.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.hf.parameters())
    with torch.no_grad():
        assert loaded(IDS).logits.dtype == torch.bfloat16


def test_resolve_dtype_names():
    assert resolve_dtype(None) is None
    assert resolve_dtype("fp32") is torch.float32
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype("BF16") is torch.bfloat16
    assert resolve_dtype(torch.float64) is torch.float64


def test_load_with_layers_path(saved_tiny):
    _, folder = saved_tiny
    assert ao.load_model(folder, layers_path="model.layers").layers_path == "model.layers"
    with pytest.raises(LayerDiscoveryError, match="layers_path"):
        ao.load_model(folder, layers_path="model.blocks")


def test_layer_at(tiny):
    assert tiny.layer_at(50) == 2
    assert tiny.layer_at(25) == 1 and tiny.layer_at(75) == 3
    for bad in (0, 100, -10, 150):
        with pytest.raises(LayerNotFoundError):
            tiny.layer_at(bad)


def test_as_model_on_peft_and_bare_models(tiny):
    import peft

    bare = ao.as_model(tiny.hf, tiny.tokenizer)
    assert bare.layers is tiny.layers and bare.tokenizer is tiny.tokenizer
    lora = peft.get_peft_model(tiny.hf, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    wrapped = ao.as_model(lora)
    assert wrapped.layers is tiny.layers and wrapped.n_layers == 4 and wrapped.d_model == 64
    assert wrapped.backbone is tiny.hf.model


def test_backbone_owns_the_layers(tiny):
    assert tiny.backbone is tiny.hf.model
    assert tiny.backbone.layers is tiny.layers


# -- the embedded model ------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_model_loads(smollm):
    assert smollm.name == "smollm2-135m"
    assert smollm.n_layers == 30 and smollm.d_model == 576
    assert smollm.layer_at(50) == 15 and smollm.layer_at(25) == 7 and smollm.layer_at(75) == 22
    assert smollm.dtype == torch.float32
    assert type(smollm.hf).__name__ == "LlamaForCausalLM"
    assert smollm.tokenizer.chat_template and "<|im_start|>" in smollm.tokenizer.chat_template


@pytest.mark.slow
def test_embedded_cache_folder(smollm):
    from activation_oracles.embedded import cache_root, embedded_dir

    folder = embedded_dir()
    assert folder.is_dir() and (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert cache_root() in folder.parents


@pytest.mark.slow
def test_embedded_second_load_is_fast(smollm):
    start = time.perf_counter()
    again = ao.load_model("smollm2-135m")
    elapsed = time.perf_counter() - start
    print(f"second load_model('smollm2-135m'): {elapsed:.2f} s")
    assert again is not smollm and again.n_layers == 30
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, smollm(IDS).logits)


@pytest.mark.slow
def test_embedded_placeholder_is_one_token(smollm):
    ids = smollm.tokenizer(" ?", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    assert smollm.tokenizer(" ? ? ?", add_special_tokens=False)["input_ids"] == ids * 3
