"""Shared fixtures: tiny random models, the embedded SmolLM2 (once per session) and hook bookkeeping.

Fast tests use ``tiny`` (a 4-block random Llama with the embedded tokenizer) or the
architecture builder ``build_arch``; tests marked ``slow`` use ``smollm``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.modules.module as torch_module

# Every per-module hook dictionary torch keeps; a leak in any of them counts.
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                     "_global_backward_pre_hooks", "_global_forward_hooks_with_kwargs",
                     "_global_forward_hooks_always_called")


def hook_snapshot(model: Any) -> frozenset[tuple[str, str, int]]:
    """Every hook on every module of ``model`` (and torch's global hooks), as ``(module, dict, id)``.

    transformers 5 installs its own output-recording hooks the first time a model is
    called with ``output_hidden_states=True`` and keeps them, so tests compare a
    snapshot taken before with one taken after instead of assuming zero.
    """
    module: nn.Module = getattr(model, "hf", model)
    out = set()
    for name, sub in module.named_modules():
        for attr in HOOK_DICTS:
            for key in getattr(sub, attr, {}) or {}:
                out.add((name, attr, int(key)))
    for attr in GLOBAL_HOOK_DICTS:
        for key in getattr(torch_module, attr, {}) or {}:
            out.add(("<global>", attr, int(key)))
    return frozenset(out)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """Run the suite on one intra-op thread (override with ``AO_TEST_THREADS``).

    The test models are tiny: a second OpenMP thread buys nothing, and when the 2-core
    machine is busy its spin-waiting makes a 64-wide matmul ~200x slower (measured:
    the files below took 90 s instead of 30 s under load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("AO_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def hooks_of() -> Callable[[Any], frozenset[tuple[str, str, int]]]:
    """``hooks_of(model)`` -> the set of hooks currently registered on it (see :func:`hook_snapshot`)."""
    return hook_snapshot


# -- tiny random models of real architectures ---------------------------------------------------------

_COMMON = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, vocab_size=64,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=64)
TINY_ARCHS: dict[str, dict[str, Any]] = {
    "llama": dict(_COMMON, num_key_value_heads=1),
    "mistral": dict(_COMMON, num_key_value_heads=1),
    "qwen2": dict(_COMMON, num_key_value_heads=1),
    "qwen3": dict(_COMMON, num_key_value_heads=1, head_dim=8),
    "gemma2": dict(_COMMON, num_key_value_heads=1, head_dim=8),
    "gemma3_text": dict(_COMMON, num_key_value_heads=1, head_dim=8),
    "phi3": dict(_COMMON, num_key_value_heads=1),
    "olmo2": dict(_COMMON, num_key_value_heads=1),
    "gpt_neox": dict(_COMMON),
    "gpt2": dict(n_embd=16, n_layer=3, n_head=2, vocab_size=64, n_positions=64, bos_token_id=1, eos_token_id=2),
}
# Where each architecture keeps its blocks: the tests' independent answer key (the library has no such table).
TINY_ARCH_LAYERS_PATH = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}


def build_tiny_arch(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised 3-block causal LM of architecture ``name``, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(name, **TINY_ARCHS[name])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def build_arch() -> Callable[..., nn.Module]:
    return build_tiny_arch


# -- the shared models ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def embedded_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer, loaded once (tiny models borrow it)."""
    from transformers import AutoTokenizer

    from activation_oracles.embedded import embedded_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_dir()), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture
def tiny(embedded_tokenizer: Any):
    """``activation_oracles.tiny.tiny_model()``: a fresh 4-block, d_model 64 random Llama per test.

    It is built with the session's embedded tokenizer, which is what ``tiny_model()``
    loads itself; sharing it only saves the tokenizer's load time.
    """
    from activation_oracles.tiny import tiny_model

    return tiny_model(tokenizer=embedded_tokenizer)


@pytest.fixture
def bare_tiny():
    """A tokenizer-less tiny Llama (128-token vocabulary), for tests that feed token ids directly."""
    from activation_oracles.tiny import tiny_model

    return tiny_model(tokenizer=None)


@pytest.fixture(scope="session")
def smollm():
    """The embedded SmolLM2-135M-Instruct, loaded once per session (tests must not modify it)."""
    import activation_oracles as ao

    return ao.load_model("smollm2-135m")


@pytest.fixture(scope="module")
def data_dir():
    """The shared data folder (skips the test where it is absent)."""
    from activation_oracles.training.classification import find_shared_data

    d = find_shared_data()
    if d is None:
        pytest.skip("shared data folder not found")
    return d
