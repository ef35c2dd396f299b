"""Validate a LoRA adapter folder completely before any of it touches a model.

PEFT will happily load adapters that change more than the adapter: ``init_lora_weights``
values such as ``"pissa"`` or ``"olora"`` rewrite the *base* weights while the adapter is
attached, ``use_dora`` re-initialises magnitude vectors from the base weights, ``bias``
other than ``"none"`` and ``modules_to_save`` carry copies of base parameters, and a
``target_modules`` that names modules without weights in the file leaves randomly
initialised LoRA layers behind. So the JSON and the tensor index (read with
``safe_open``: names, shapes and dtypes only) are checked here against each other and
against the base model's modules, and anything outside plain LoRA is refused with
an :class:`~.errors.AdapterError` that names the setting.

>>> check_adapter_config({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, "demo")["r"]
4
>>> check_adapter_config({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "init_lora_weights": "pissa"},
...                      "demo")
Traceback (most recent call last):
...
activation_oracles.errors.AdapterError: demo: init_lora_weights='pissa' is not accepted; ...
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from .errors import AdapterError, UnsafeFileError

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# init_lora_weights values that only initialise the LoRA matrices (and are overwritten by the file).
SAFE_INITS = (True, False, "gaussian")
# Settings that add or change weights outside lora_A/lora_B, or that this loader does not implement:
# accepted only at their "off" value (None, False, empty).
OFF_ONLY = ("use_dora", "modules_to_save", "layer_replication", "trainable_token_indices", "target_parameters",
            "megatron_config", "alora_invocation_tokens", "arrow_config", "kasa_config", "monteclora_config",
            "use_bdlora", "use_qalora", "velora_config")
_WHY = {"use_dora": "DoRA's magnitude vectors are re-initialised from the base weights on load",
        "modules_to_save": "it stores full copies of base modules",
        "layer_replication": "it changes the base model's layer stack",
        "trainable_token_indices": "it replaces rows of the base embedding"}
# Settings PEFT defines that are harmless here or handled below. (auto_mapping only tells
# AutoPeftModel which class to import; it is never passed on: see IGNORED.)
UNDERSTOOD = {"r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "fan_in_fan_out", "bias",
              "use_rslora", "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern",
              "alpha_pattern", "inference_mode", "task_type", "peft_type", "base_model_name_or_path", "revision",
              "peft_version", "lora_bias", "ensure_weight_tying", "qalora_group_size", "megatron_core",
              "loftq_config", "eva_config", "corda_config", "lora_ga_config", "runtime_config", "auto_mapping"}
IGNORED = ("auto_mapping", "base_model_name_or_path", "revision")
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                  r"(?:\.(?P<leaf>weight|bias))?$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _off(v: Any) -> bool:
    return v is None or v is False or v == {} or v == [] or v == ""


def check_adapter_config(data: Any, where: str) -> dict[str, Any]:
    """``data`` (a parsed adapter_config.json) if it describes a plain LoRA adapter; else AdapterError."""
    if not isinstance(data, dict):
        raise AdapterError(f"{where}: {ADAPTER_CONFIG} holds a {type(data).__name__}; expected a JSON object as "
                           "written by peft_model.save_pretrained(dir).")
    if data.get("peft_type") != "LORA":
        raise AdapterError(f"{where}: peft_type={data.get('peft_type')!r}; only LoRA adapters (peft_type 'LORA') "
                           "can be loaded as oracles or organisms. Train the adapter with LoraConfig.")
    init = data.get("init_lora_weights", True)
    if not any(init is s or (isinstance(init, str) and init == s) for s in SAFE_INITS):
        raise AdapterError(f"{where}: init_lora_weights={init!r} is not accepted; only True, False or 'gaussian' "
                           "(initialisations that never touch the base weights). Methods such as 'pissa', "
                           "'olora', 'loftq', 'corda' or 'eva' rewrite the base weights when the adapter is attached. "
                           f"Set init_lora_weights to true in {ADAPTER_CONFIG} if the adapter's tensors were "
                           "saved as plain LoRA, or convert it to plain LoRA first.")
    for key in OFF_ONLY:
        if key in data and not _off(data[key]):
            why = _WHY.get(key, "activation_oracles loads only plain LoRA matrices")
            raise AdapterError(f"{where}: {key}={data[key]!r} is not supported ({why}); expected it unset, null or "
                               "false. Retrain (or re-save) the adapter as plain LoRA.")
    if data.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias={data['bias']!r}; only 'none' is accepted (other values store trained "
                           "copies of the base model's biases, which would overwrite them).")
    unknown = sorted(k for k, v in data.items() if k not in UNDERSTOOD and k not in OFF_ONLY and not _off(v))
    if unknown:
        raise AdapterError(f"{where}: {ADAPTER_CONFIG} sets {', '.join(f'{k}={data[k]!r}' for k in unknown)}, which "
                           "activation_oracles does not know how to load safely; expected plain LoRA settings only.")
    r = data.get("r")
    if not _is_int(r) or r < 1:
        raise AdapterError(f"{where}: r={r!r}; expected a positive integer (the LoRA rank).")
    alpha = data.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise AdapterError(f"{where}: lora_alpha={alpha!r}; expected a number.")
    targets = data.get("target_modules")
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise AdapterError(f"{where}: target_modules={targets!r}; expected a non-empty list of module names (or a "
                           "regex string) as PEFT writes it.")
    for key in ("rank_pattern", "alpha_pattern"):
        table = data.get(key) or {}
        if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in table.values()):
            raise AdapterError(f"{where}: {key}={table!r}; expected an object of module pattern -> number.")
    return data


@dataclass(frozen=True)
class AdapterIndex:
    """An adapter folder's checked config and its tensor index ``{key: shape}`` (no tensor data)."""

    folder: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]


def read_adapter_index(folder: Path) -> AdapterIndex:
    """Read and check ``adapter_config.json`` and the names/shapes/dtypes of ``adapter_model.safetensors``."""
    from safetensors import SafetensorError, safe_open

    path = folder / ADAPTER_FILE
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # pickle protocol 2+ / torch.save zip
        raise UnsafeFileError(f"{str(path)!r} is a pickle / torch.save file named .safetensors; refusing to load it.")
    try:
        data = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{str(folder / ADAPTER_CONFIG)!r} is not valid JSON ({exc}).") from None
    config = check_adapter_config(data, f"adapter {str(folder)!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                dtype = str(sl.get_dtype())
                if dtype not in ("F16", "BF16", "F32", "F64"):
                    raise AdapterError(f"adapter {str(folder)!r}: tensor {key!r} has dtype {dtype}; LoRA weights "
                                       "are floating point (F16, BF16, F32 or F64).")
                shapes[key] = tuple(int(d) for d in sl.get_shape())
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, AdapterError):
            raise
        raise AdapterError(f"adapter file {str(path)!r} is unreadable or truncated ({exc}); re-copy or re-train "
                           "the oracle.") from None
    if not shapes:
        raise AdapterError(f"adapter file {str(path)!r} holds no tensors; re-save the adapter.")
    return AdapterIndex(folder=folder, config=config, shapes=shapes)


def _plain_modules(hf: nn.Module) -> dict[str, nn.Module]:
    """The model's modules by the names the adapter uses (PEFT wrappers and LoRA internals left out)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        BaseTunerLayer = ()  # type: ignore[assignment]
    root = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
    out: dict[str, nn.Module] = {}
    skip: list[str] = []
    for name, module in root.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue  # base_layer / lora_A / lora_B / dropout inside a LoRA layer
        if isinstance(module, BaseTunerLayer):
            skip.append(name)
            module = module.get_base_layer()
        out[name] = module
    return out


def _expected(cfg: dict[str, Any], key: str, module: str, default: Any) -> Any:
    from peft.utils.other import get_pattern_key

    table = cfg.get(key) or {}
    return table.get(get_pattern_key(list(table), module), default) if table else default


def _targeted(cfg: dict[str, Any], modules: dict[str, nn.Module], hf: nn.Module) -> set[str]:
    """The module names PEFT would put LoRA layers on for this config (its own matching rule)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = cfg["target_modules"]
    if isinstance(targets, str) and targets.lower() == "all-linear":
        from transformers.pytorch_utils import Conv1D

        out_emb = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        return {n for n, m in modules.items() if isinstance(m, (nn.Linear, Conv1D)) and m is not out_emb}
    fields = {k: cfg[k] for k in ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern")
              if cfg.get(k) is not None}
    lcfg = LoraConfig(r=int(cfg["r"]), **fields)
    return {n for n in modules if n and bool(check_target_module_exists(lcfg, n))}  # excluded ones are falsy


def check_adapter_fits(index: AdapterIndex, hf: nn.Module, model_name: str) -> None:
    """Every tensor is a LoRA matrix of a module ``hf`` has, with the config's rank and the module's widths,
    and the modules the config targets are exactly the modules the file has weights for."""
    from transformers.pytorch_utils import Conv1D

    where = f"adapter {str(index.folder)!r}"
    modules = _plain_modules(hf)
    parts: dict[str, set[str]] = {}
    for key, shape in index.shapes.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(f"{where}: tensor {key!r} is not a LoRA matrix (expected '<module>.lora_A.weight' / "
                               "'.lora_B.weight'); an adapter holding other weights could overwrite the base model.")
        path, part, leaf = m.group("module"), m.group("part"), m.group("leaf")
        if leaf == "bias" and not (part == "lora_B" and index.config.get("lora_bias")):
            raise AdapterError(f"{where}: tensor {key!r} is a bias, but {ADAPTER_CONFIG} does not set lora_bias.")
        name = path.removeprefix("base_model.model.")
        if name not in modules:
            raise AdapterError(f"{where} targets module {name!r}, which {model_name!r} does not have; the adapter was "
                               "made for another base model.")
        base = modules[name]
        r = _expected(index.config, "rank_pattern", name, index.config["r"])
        embedding = part.startswith("lora_embedding")
        if embedding != isinstance(base, nn.Embedding) or not isinstance(base, (nn.Linear, nn.Embedding, Conv1D)):
            raise AdapterError(f"{where}: {key} is a {part} matrix but {model_name!r}'s {name} is a "
                               f"{type(base).__name__}; the adapter was made for another base model.")
        if isinstance(base, nn.Embedding):
            in_f, out_f = base.num_embeddings, base.embedding_dim
        elif isinstance(base, Conv1D):
            in_f, out_f = base.weight.shape[0], base.weight.shape[1]
        else:
            in_f, out_f = base.in_features, base.out_features
        if leaf == "bias":
            want = (out_f,)
        elif part in ("lora_A", "lora_embedding_A"):
            want = (r, in_f)
        else:
            want = (out_f, r)
        if tuple(shape) != want:
            rank = shape[:1] if part.endswith("A") else shape[1:]
            what = "the rank differs" if leaf != "bias" and tuple(rank) != (r,) else "the widths differ"
            raise AdapterError(f"{where}: {key} has shape {list(shape)} but {model_name!r}'s {name} with r={r} needs "
                               f"{list(want)} ({what}); the adapter was made for another base model or its "
                               f"{ADAPTER_CONFIG} does not match its weights.")
        parts.setdefault(name, set()).add(part.replace("embedding_", ""))
    half = sorted(n for n, p in parts.items() if p != {"lora_A", "lora_B"})
    if half:
        raise AdapterError(f"{where}: modules {half[:3]} have only one of lora_A / lora_B; the file is incomplete.")
    targeted = _targeted(index.config, modules, hf)
    if targeted != set(parts):
        extra, missing = sorted(targeted - set(parts)), sorted(set(parts) - targeted)
        raise AdapterError(f"{where}: target_modules={index.config['target_modules']!r} selects "
                           f"{len(targeted)} modules of {model_name!r} but the file has weights for {len(parts)}"
                           + (f"; no weights for {extra[:3]}" if extra else "")
                           + (f"; weights for untargeted {missing[:3]}" if missing else "")
                           + f". {ADAPTER_CONFIG} and {ADAPTER_FILE} do not belong together, or the adapter was "
                           "made for another base model.")


def load_adapter_tensors(index: AdapterIndex) -> dict[str, Any]:
    """All tensors of the checked file, read fully so a truncated file fails before anything is attached."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = index.folder / ADAPTER_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"adapter file {str(path)!r} is unreadable or truncated ({exc}); re-copy or re-train "
                           "the oracle.") from None
    if {k: tuple(v.shape) for k, v in tensors.items()} != index.shapes:
        raise AdapterError(f"adapter file {str(path)!r} changed while it was being loaded; load it again.")
    return tensors
