"""Tiny random models built from real transformers configs, for tests, smoke runs and the ``tiny`` preset.

They are real models (real architectures, real tokenizer), only small and
randomly initialised, so a pipeline that works on them exercises the same code
as on a full-size model.

>>> m = tiny_model(n_layers=2, d_model=32, tokenizer=None)
>>> m.n_layers, m.d_model
(2, 32)
"""

from __future__ import annotations

from typing import Any

import torch

from .models import Model, as_model

TINY_NAME = "tiny-llama"


def tiny_model(n_layers: int = 4, d_model: int = 64, *, seed: int = 0, tokenizer: Any = "smollm2-135m",
               vocab_size: int | None = None, dtype: torch.dtype = torch.float32,
               init_range: float = 0.02) -> Model:
    """A randomly initialised Llama with the embedded SmolLM2 tokenizer (and its chat template).

    ``tokenizer=None`` gives a bare model with a 128-token vocabulary and no tokenizer.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = None
    if isinstance(tokenizer, str):
        from .embedded import EMBEDDED_NAME, embedded_dir

        if tokenizer != EMBEDDED_NAME:
            raise ValueError(f"tiny_model tokenizer={tokenizer!r}; only {EMBEDDED_NAME!r} or a tokenizer object")
        tok = AutoTokenizer.from_pretrained(str(embedded_dir()), local_files_only=True)
    elif tokenizer is not None:
        tok = tokenizer
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vocab = vocab_size or (len(tok) if tok is not None else 128)
    config = LlamaConfig(
        hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=2048,
        tie_word_embeddings=True, initializer_range=init_range, bos_token_id=getattr(tok, "bos_token_id", 1),
        eos_token_id=getattr(tok, "eos_token_id", 2), pad_token_id=getattr(tok, "pad_token_id", 2),
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        hf = LlamaForCausalLM(config).to(dtype).eval()
    hf.config.name_or_path = TINY_NAME
    return as_model(hf, tok, name=TINY_NAME)
