"""Open an oracle directory (LoRA adapter + ``oracle_config.json``) safely.

Everything is checked before any weight is attached: the files exist, are
safetensors (never a pickle), are complete, and fit the base model's shapes.
A failed check raises and leaves the base model untouched.

>>> import activation_oracles as ao
>>> oracle = ao.load_oracle("path/to/oracle_dir")                 # doctest: +SKIP
>>> target = ao.load_model("smollm2-135m")                        # doctest: +SKIP
>>> oracle = ao.load_oracle("path/to/oracle_dir", base=target)    # shares the base weights  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .adapters import adapter_names, park_adapters
from .config import OracleConfig
from .errors import AdapterError, OracleNotAvailableError, UnsafeFileError
from .models import Model, as_model, load_model

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ORACLE_CONFIG = "oracle_config.json"
_PICKLE_NAMES = ("adapter_model.bin", "pytorch_model.bin", "adapter_model.pt", "adapter_model.pth")
SHIPPED = ("smollm2-135m",)


def shipped_oracle_dir(name: str) -> Path:
    """The package-data folder of a shipped oracle (it may not exist in this installation)."""
    return Path(str(resources.files("activation_oracles"))) / "oracles" / name


def _check_files(folder: Path) -> None:
    for bad in _PICKLE_NAMES:
        if (folder / bad).exists() and not (folder / ADAPTER_FILE).exists():
            raise UnsafeFileError(f"{str(folder / bad)!r} is a pickle-based adapter; activation_oracles never "
                                  "unpickles. Re-save the adapter with safetensors "
                                  "(peft_model.save_pretrained(dir, safe_serialization=True)).")
    for name in (ORACLE_CONFIG, ADAPTER_CONFIG, ADAPTER_FILE):
        if not (folder / name).is_file():
            raise AdapterError(f"oracle directory {str(folder)!r} lacks {name}; expected {ORACLE_CONFIG}, "
                               f"{ADAPTER_CONFIG} and {ADAPTER_FILE} (as written by `ao train`).")


def _read_adapter(folder: Path) -> dict[str, Any]:
    """Load the adapter tensors fully (so a truncated file fails here, before anything is attached)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / ADAPTER_FILE
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80" or head == b"PK":
        raise UnsafeFileError(f"{str(path)!r} is a pickle / torch.save file named .safetensors; refusing to load it.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"adapter file {str(path)!r} is unreadable or truncated ({exc}); re-copy or re-train "
                           "the oracle.") from None


def _check_shapes(base: Model, tensors: dict[str, Any], folder: Path) -> None:
    """Every LoRA matrix must fit the base module it targets."""
    modules = dict(base.hf.named_modules())
    for key, tensor in tensors.items():
        if ".lora_A" not in key and ".lora_B" not in key:
            continue
        path = key.split(".lora_")[0]
        for prefix in ("base_model.model.", ""):
            candidate = path[len(prefix):] if path.startswith(prefix) else None
            if candidate is not None and candidate in modules:
                module = modules[candidate]
                break
        else:
            raise AdapterError(f"adapter {str(folder)!r} targets module {path!r}, which {base.name!r} does not "
                               "have; the adapter was made for another base model.")
        base_layer = getattr(module, "base_layer", module)
        in_f = getattr(base_layer, "in_features", None)
        out_f = getattr(base_layer, "out_features", None)
        if ".lora_A" in key and in_f is not None and tensor.shape[-1] != in_f:
            raise AdapterError(f"adapter {str(folder)!r}: {key} has input width {tensor.shape[-1]} but "
                               f"{base.name!r}'s {candidate} takes {in_f}; the adapter was made for another base model.")
        if ".lora_B" in key and out_f is not None and tensor.shape[0] != out_f:
            raise AdapterError(f"adapter {str(folder)!r}: {key} has output width {tensor.shape[0]} but "
                               f"{base.name!r}'s {candidate} gives {out_f}; the adapter was made for another base model.")


def load_oracle(spec: str | os.PathLike[str], *, base: Any = None, dtype: Any = None, device: Any = None):
    """Load an activation oracle.

    Args:
        spec: ``"smollm2-135m"`` (the shipped default oracle for the embedded model) or a
            directory holding ``oracle_config.json`` and a PEFT LoRA adapter in safetensors.
        base: a loaded base model to attach the adapter to (e.g. your target model). The
            weights are then shared: the adapter is added under its own name and is active
            only inside oracle calls, so the target keeps behaving as the base model.
            Without ``base``, the config's ``base_model`` is loaded.
        dtype, device: passed to ``ao.load_model`` when the base is loaded here.

    Returns:
        An :class:`~activation_oracles.ActivationOracle`.
    """
    from .oracle import ActivationOracle

    spec_str = os.fspath(spec)
    if spec_str in SHIPPED:
        folder = shipped_oracle_dir(spec_str)
        if not (folder / ORACLE_CONFIG).is_file():
            raise OracleNotAvailableError(
                f"the shipped oracle {spec_str!r} is not in this installation ({folder} is missing). Train one "
                "with `ao train --preset smollm2-135m --out DIR` and pass DIR, or use "
                "ao.ActivationOracle.untrained(model) for the untrained baseline.")
    else:
        folder = Path(spec_str).expanduser()
        if not folder.is_dir():
            if folder.is_file():
                raise UnsafeFileError(f"{spec_str!r} is a file; an oracle is a directory with {ORACLE_CONFIG} and "
                                      f"{ADAPTER_FILE}. (Pickled checkpoints are never loaded.)")
            raise AdapterError(f"oracle spec {spec_str!r} is neither a shipped oracle {SHIPPED} nor an existing "
                               "directory; pass the directory written by `ao train`.")
    _check_files(folder)
    config = OracleConfig.load(folder / ORACLE_CONFIG)
    tensors = _read_adapter(folder)
    try:
        adapter_cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{str(folder / ADAPTER_CONFIG)!r} is not valid JSON ({exc}).") from None

    if base is None:
        base_model = load_model(config.base_model, dtype=dtype, device=device)
    else:
        base_model = as_model(base)
    if (config.d_model and base_model.d_model != config.d_model) or \
            (config.n_layers and base_model.n_layers != config.n_layers):
        raise AdapterError(
            f"oracle {str(folder)!r} was trained on {config.base_model!r} (n_layers={config.n_layers}, "
            f"d_model={config.d_model}) but the base given is {base_model.name!r} (n_layers={base_model.n_layers}, "
            f"d_model={base_model.d_model}); load the oracle on its own base model.")
    _check_shapes(base_model, tensors, folder)
    _attach(base_model, folder, config.adapter_name, adapter_cfg)
    park_adapters(base_model.hf)  # the shared model acts as its base outside oracle calls
    oracle_model = Model(hf=base_model.hf, tokenizer=base_model.tokenizer, layers=base_model.layers,
                         layers_path=base_model.layers_path, name=base_model.name, n_layers=base_model.n_layers,
                         d_model=base_model.d_model)
    return ActivationOracle(oracle_model, config, adapter=config.adapter_name)


def _attach(base: Model, folder: Path, name: str, adapter_cfg: dict[str, Any]) -> None:
    """Add the adapter to ``base.hf`` in place under ``name`` (PEFT's own loader, safetensors only)."""
    from peft import LoraConfig, PeftModel, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    if name in adapter_names(base.hf):
        raise AdapterError(f"an adapter named {name!r} is already loaded on {base.name!r}; load the oracle on a "
                           "fresh base model or give it another adapter_name in oracle_config.json.")
    if isinstance(base.hf, PeftModel):
        base.hf.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        return
    # Inject into the plain model so the caller's object itself carries the adapter (one copy of weights).
    cfg_fields = {k: v for k, v in adapter_cfg.items() if k in LoraConfig.__dataclass_fields__}
    lora_cfg = LoraConfig(**cfg_fields)
    inject_adapter_in_model(lora_cfg, base.hf, adapter_name=name)
    state = load_file(str(folder / ADAPTER_FILE))
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    result = set_peft_model_state_dict(base.hf, state, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if unexpected:
        raise AdapterError(f"adapter {str(folder)!r} holds weights the model has no place for: {unexpected[:3]}...")
    base.hf.to(next(base.hf.parameters()).device)
