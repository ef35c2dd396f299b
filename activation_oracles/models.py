"""Load a decoder-only language model and describe it: blocks, width, depth, tokenizer.

``load_model`` accepts the embedded default (``"smollm2-135m"``), a local
directory, or a Hugging Face hub id. ``as_model`` wraps a model you already have
(a bare ``PreTrainedModel`` or a PEFT-wrapped one), so every function that takes
a :class:`Model` takes those too.

>>> import activation_oracles as ao
>>> target = ao.load_model("smollm2-135m")
>>> target.n_layers, target.d_model, target.layer_at(50)
(30, 576, 15)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn

from .embedded import EMBEDDED_NAME, embedded_dir
from .errors import AOError, ModelSpecError, NotDecoderLMError, OfflineError, RemoteCodeError, UnsafeFileError
from .layers import find_decoder_layers
from .safe_files import check_model_files, check_model_folder, read_json_file

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn ``"bf16"``, ``"float32"``, a ``torch.dtype`` or ``None`` into a ``torch.dtype`` (or ``None``)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ModelSpecError(f"dtype={dtype!r} is not known; expected one of {sorted(_DTYPES)} or a torch.dtype.")
    return _DTYPES[key]


@dataclass
class Model:
    """A decoder-only LM with what the hooks need to know about it.

    Attributes:
        hf: the model to call (a ``PreTrainedModel`` or a PEFT wrapper of one).
        tokenizer: its tokenizer (``None`` when wrapped without one).
        layers: the ``nn.ModuleList`` of decoder blocks.
        layers_path: dotted path of ``layers`` inside ``hf``.
        name: a human-readable model name, recorded as provenance.
        n_layers: number of decoder blocks.
        d_model: residual-stream width.
    """

    hf: nn.Module
    tokenizer: Any
    layers: nn.ModuleList
    layers_path: str
    name: str
    n_layers: int
    d_model: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def backbone(self) -> nn.Module:
        """The module that owns the decoder stack (it receives attention_mask and the KV cache)."""
        parent_path = self.layers_path.rsplit(".", 1)[0] if "." in self.layers_path else ""
        module: nn.Module = self.hf
        for part in filter(None, parent_path.split(".")):
            module = getattr(module, part)
        return module

    def layer_at(self, percent: float) -> int:
        """The block index at ``percent`` depth, ``int(n_layers * percent / 100)`` as in the reference."""
        from .errors import LayerNotFoundError

        if not 0 < percent < 100:
            raise LayerNotFoundError(
                f"layer_percent={percent} is outside (0, 100); pass e.g. 25, 50 or 75 (the reference's depths)."
            )
        return int(self.n_layers * percent / 100)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.hf(*args, **kwargs)

    def __repr__(self) -> str:
        return (f"Model(name={self.name!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
                f"layers_path={self.layers_path!r}, dtype={self.dtype}, device={self.device})")


def _base_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def as_model(obj: Any, tokenizer: Any = None, *, layers_path: str | None = None, name: str | None = None) -> Model:
    """Wrap a ``Model``, a ``PreTrainedModel`` or a PEFT model as a :class:`Model`.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                   num_attention_heads=2, num_key_value_heads=2, vocab_size=64)
    >>> as_model(LlamaForCausalLM(cfg)).n_layers
    2
    """
    if isinstance(obj, Model):
        if tokenizer is not None and obj.tokenizer is None:
            obj.tokenizer = tokenizer
        return obj
    if not isinstance(obj, nn.Module):
        raise NotDecoderLMError(
            f"expected a decoder-only language model (a transformers PreTrainedModel, a PEFT model or "
            f"an activation_oracles Model), got {type(obj).__name__}. Load one with ao.load_model(...)."
        )
    config = _base_config(obj)
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(obj, "get_output_embeddings") \
            or obj.get_output_embeddings() is None:
        kind = "an encoder-decoder model" if getattr(config, "is_encoder_decoder", False) else type(obj).__name__
        raise NotDecoderLMError(
            f"expected a decoder-only causal LM with an LM head (e.g. AutoModelForCausalLM), got {kind}. "
            "Load the model with AutoModelForCausalLM or ao.load_model(...)."
        )
    # An encoder with an LM head (BertForMaskedLM) passes the checks above; transformers marks every
    # causal LM as able to generate, and masked LMs as not (PEFT: ask the wrapped model).
    base = obj.get_base_model() if hasattr(obj, "get_base_model") else obj
    can_generate = getattr(base, "can_generate", None)
    if callable(can_generate) and not can_generate():
        raise NotDecoderLMError(
            f"expected a decoder-only causal LM, got {type(base).__name__}, which transformers marks as unable "
            "to generate (an encoder such as a masked LM). Load a causal LM with AutoModelForCausalLM "
            "or ao.load_model(...)."
        )
    path, layers = find_decoder_layers(obj, layers_path)
    d_model = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model", None)
    if not isinstance(d_model, int):
        d_model = obj.get_input_embeddings().weight.shape[-1]
    model_name = name or getattr(config, "name_or_path", "") or type(obj).__name__
    return Model(hf=obj, tokenizer=tokenizer, layers=layers, layers_path=path, name=str(model_name),
                 n_layers=len(layers), d_model=int(d_model))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or ""
    except Exception:  # pragma: no cover - huggingface_hub always present with transformers
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") and " " not in p for p in parts) \
        and not spec.startswith(("/", "~"))


def _check_hub_repo(repo: str, local_files_only: bool) -> None:
    """:mod:`.safe_files` checks on a hub repo: its cached snapshot, or its file list and configs online.

    Offline, a snapshot that lacks safetensors weights may just be partly cached, so it raises
    ``OSError`` (the caller then tries the hub) unless it asks for remote code, which is final.
    """
    import huggingface_hub as hub

    if local_files_only:
        snapshot = hub.snapshot_download(repo, local_files_only=True)  # LocalEntryNotFoundError is an OSError
        try:
            check_model_folder(snapshot)
        except RemoteCodeError:
            raise
        except (UnsafeFileError, ModelSpecError) as exc:
            raise OSError(f"{repo!r} is not fully cached ({exc})") from None
        return
    names = set(hub.list_repo_files(repo))

    def read(name: str) -> Any:
        return read_json_file(Path(hub.hf_hub_download(repo, name))) if name in names else None

    check_model_files(names, repo, read)


def load_model(spec: str | os.PathLike[str] = EMBEDDED_NAME, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device | None = None, layers_path: str | None = None) -> Model:
    """Load a decoder-only LM and its tokenizer.

    Args:
        spec: ``"smollm2-135m"`` (the embedded default), a local directory with
            ``config.json``, or a Hugging Face hub id (needs network unless cached).
        dtype: e.g. ``"bf16"`` or ``torch.float32``; default float32.
        device: e.g. ``"cuda"``; default CPU.
        layers_path: dotted path to the decoder blocks when discovery cannot find them.

    Only tensors are ever read: a folder or repo without ``model.safetensors`` (e.g. only a
    pickled ``pytorch_model.bin``) raises :class:`~.errors.UnsafeFileError` and one whose
    config needs the repo's own code (``auto_map``) raises :class:`~.errors.RemoteCodeError`,
    both before transformers loads anything.

    >>> import activation_oracles as ao
    >>> ao.load_model("smollm2-135m").n_layers   # doctest: +SKIP
    30
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checks import check_device

    torch_dtype = resolve_dtype(dtype) or torch.float32
    device = check_device(device)  # before any weights load: torch would fail halfway, with an AssertionError
    spec_str = os.fspath(spec)
    if not spec_str.strip():
        raise ModelSpecError("model spec is empty; pass 'smollm2-135m', a local directory or a hub id.")
    name = spec_str
    if spec_str.lower() == EMBEDDED_NAME:
        folder: str = str(embedded_dir())
        name = EMBEDDED_NAME
        local_only = True
    elif Path(spec_str).expanduser().is_dir():
        folder = str(Path(spec_str).expanduser())
        if not (Path(folder) / "config.json").is_file():
            raise ModelSpecError(f"directory {folder!r} has no config.json; expected a saved transformers model "
                                 "(model.save_pretrained(dir) and tokenizer.save_pretrained(dir)).")
        local_only = True
    elif _looks_like_hub_id(spec_str):
        folder = spec_str
        local_only = False
    else:
        raise ModelSpecError(
            f"model spec {spec_str!r} is not 'smollm2-135m', an existing local directory, or a hub id "
            "('org/name'). Check the path, or use the embedded default 'smollm2-135m'."
        )

    if local_only:
        check_model_folder(folder)  # pickles and remote code are refused before transformers reads a byte

    def _load(local_files_only: bool) -> tuple[Any, Any]:
        if not local_only:
            _check_hub_repo(folder, local_files_only)
        # Belt and braces after the checks: transformers may only read safetensors and never imports
        # the repo's own Python files (trust_remote_code=False also means no [y/N] prompt).
        kw = {"local_files_only": local_files_only, "trust_remote_code": False}
        tok = AutoTokenizer.from_pretrained(folder, **kw)
        mdl = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True, **kw)
        return tok, mdl

    if local_only:
        try:
            tokenizer, hf = _load(True)
        except AOError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, SafetensorError...
            reason = " ".join(str(exc).split())[:300]
            raise ModelSpecError(
                f"the model folder {folder!r} cannot be loaded ({type(exc).__name__}: {reason}); expected a folder "
                "written by model.save_pretrained(dir) and tokenizer.save_pretrained(dir) (config.json, tokenizer "
                "files, model.safetensors). Re-save it, or pass another folder.") from None
    else:
        try:
            tokenizer, hf = _load(True)  # a cached hub model needs no network
        except OSError:
            if not _hub_reachable():
                raise OfflineError(
                    f"{spec_str!r} is not in the local Hugging Face cache and the hub cannot be reached "
                    "(offline). Download it on a connected machine and pass its local directory instead "
                    "(ao.load_model('/path/to/model_dir')), or use the embedded default 'smollm2-135m'."
                ) from None
            tokenizer, hf = _load(False)
    if device is not None:
        hf = hf.to(device)
    hf.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return as_model(hf, tokenizer, layers_path=layers_path, name=name)
