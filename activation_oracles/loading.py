"""Open an oracle directory (LoRA adapter + ``oracle_config.json``, or the adapter alone) safely.

Everything is checked before any weight is attached: the files exist, are
safetensors (never a pickle), are complete, every field of both JSON files has
the right type, the adapter is plain LoRA (nothing that rewrites base weights),
and its ranks, target modules and shapes fit the base model. A failed check
raises and leaves the base model untouched; a failure while attaching removes
every LoRA layer it added, so the base is bit-identical to before.
``unload_oracle`` detaches a loaded oracle from a shared base.

>>> import activation_oracles as ao
>>> oracle = ao.load_oracle("path/to/oracle_dir")                 # doctest: +SKIP
>>> target = ao.load_model("smollm2-135m")                        # doctest: +SKIP
>>> oracle = ao.load_oracle("path/to/oracle_dir", base=target)    # shares the base weights  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from .adapter_checks import (
    ADAPTER_CONFIG, ADAPTER_FILE, IGNORED, AdapterIndex, check_adapter_fits, load_adapter_tensors, read_adapter_index,
)
from .adapters import adapter_names, park_adapters, tuner_layers
from .config import OracleConfig
from .errors import AdapterError, ConfigError, OracleNotAvailableError, UnsafeFileError
from .models import Model, as_model, load_model, resolve_dtype

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


def load_oracle(spec: str | os.PathLike[str], *, base: Any = None, dtype: Any = None, device: Any = None):
    """Load an activation oracle.

    Args:
        spec: ``"smollm2-135m"`` (the shipped default oracle for the embedded model); a
            directory holding ``oracle_config.json`` and a PEFT LoRA adapter in safetensors; a
            directory holding only the adapter, as the reference code publishes its oracles (its
            conventions are then assumed and recorded: see :mod:`.reference_format`); or a hub id
            ``org/name`` of either (online, or cached; only JSON and safetensors files are fetched).
        base: a loaded base model to attach the adapter to (e.g. your target model). The
            weights are then shared: the adapter is added under its own name and is active
            only inside oracle calls, so the target keeps behaving as the base model.
            Without ``base``, the config's ``base_model`` is loaded.
        dtype, device: passed to ``ao.load_model`` when the base is loaded here.

    Returns:
        An :class:`~activation_oracles.ActivationOracle`.

    Raises:
        ConfigError / AdapterError naming the bad field or tensor, UnsafeFileError for pickles,
        OfflineError for a hub id that is not cached while offline; in every case before ``base``
        is changed. ``ao.unload_oracle(oracle)`` detaches it again.
    """
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
            from .adapter_source import fetch_adapter_repo, looks_like_repo_id

            if not looks_like_repo_id(spec_str):
                raise AdapterError(f"oracle spec {spec_str!r} is neither a shipped oracle {SHIPPED}, an existing "
                                   "directory, nor a hub id ('org/name'); pass the directory written by `ao train` "
                                   "or a LoRA adapter folder / hub repo in the reference's format.")
            folder = fetch_adapter_repo(spec_str, what="oracle")  # JSON + safetensors only; OfflineError offline
    from .reference_format import is_reference_dir, load_reference_oracle

    if is_reference_dir(folder):  # adapter files without oracle_config.json: the reference's published format
        return load_reference_oracle(folder, base=base, dtype=dtype, device=device, source=spec_str)
    _check_files(folder)
    # Everything on disk is read and checked before the base model is loaded or touched.
    config = OracleConfig.load(folder / ORACLE_CONFIG)
    index = read_adapter_index(folder)
    tensors = load_adapter_tensors(index)

    if base is None:
        base_model = _tiny_base(config, dtype, device) or load_model(config.base_model, dtype=dtype, device=device)
    else:
        base_model = as_model(base)
    if (config.d_model and base_model.d_model != config.d_model) or \
            (config.n_layers and base_model.n_layers != config.n_layers):
        raise AdapterError(
            f"oracle {str(folder)!r} was trained on {config.base_model!r} (n_layers={config.n_layers}, "
            f"d_model={config.d_model}) but the base given is {base_model.name!r} (n_layers={base_model.n_layers}, "
            f"d_model={base_model.d_model}); load the oracle on its own base model.")
    return attach_oracle(base_model, folder, config, index, tensors)


def attach_oracle(base_model: Model, folder: Path, config: OracleConfig, index: AdapterIndex,
                  tensors: dict[str, Any]) -> Any:
    """Attach a checked oracle adapter to ``base_model`` and wrap it as an ``ActivationOracle``.

    Args:
        base_model: the (possibly shared) base model.
        folder: the adapter folder ``index`` and ``tensors`` were read from.
        config: the oracle's settings (from ``oracle_config.json`` or the reference's conventions).
        index, tensors: the adapter's checked index and tensors (read before anything is touched).

    Returns:
        The :class:`~activation_oracles.ActivationOracle`.

    Raises:
        AdapterError: a placeholder the tokenizer splits, or an adapter that does not fit; in both cases
            ``base_model`` is left as it was.
    """
    from .oracle import ActivationOracle
    from .prompt import placeholder_id

    if base_model.tokenizer is None:
        raise AdapterError(f"base model {base_model.name!r} has no tokenizer; wrap it with ao.as_model(model, "
                           "tokenizer) so the oracle's prompt can be built.")
    placeholder_id(base_model.tokenizer, config)  # a placeholder this tokenizer splits: refused before attaching
    attach_adapter(base_model, folder, config.adapter_name, index=index, tensors=tensors)
    park_adapters(base_model.hf)  # the shared model acts as its base outside oracle calls
    oracle_model = Model(hf=base_model.hf, tokenizer=base_model.tokenizer, layers=base_model.layers,
                         layers_path=base_model.layers_path, name=base_model.name, n_layers=base_model.n_layers,
                         d_model=base_model.d_model)
    return ActivationOracle(oracle_model, config, adapter=config.adapter_name)


def _tiny_base(config: OracleConfig, dtype: Any, device: Any) -> Any:
    """The random tiny base of an ``ao train --preset tiny`` run, rebuilt from the run's stored settings.

    Such a base exists nowhere on disk or on a hub (it is ``tiny_model(...)`` of a seed), so it is
    rebuilt exactly as the trainer built it; None for every other oracle.
    """
    from .tiny import TINY_NAME, tiny_model

    model_cfg = ((config.training or {}).get("config") or {}).get("model") or {}
    if config.base_model != TINY_NAME or model_cfg.get("name") != "tiny":
        return None
    try:
        m = tiny_model(n_layers=int(model_cfg.get("tiny_layers", 4)), d_model=int(model_cfg.get("tiny_d_model", 64)),
                       seed=int(model_cfg.get("tiny_seed", 0)), dtype=resolve_dtype(dtype or model_cfg.get("dtype") or "fp32"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the tiny run's stored model settings {model_cfg} cannot rebuild its base ({exc}); "
                          "pass base=tiny_model(...) with the run's settings.") from None
    if device is not None:
        m.hf.to(device)
    return m


def unload_oracle(oracle: Any) -> None:
    """Detach a loaded oracle's adapter from its (possibly shared) base model.

    Every LoRA layer the oracle added is removed, so a base that carried no other adapter
    is structurally the model it was before :func:`load_oracle` (same modules, same
    ``state_dict``). The oracle object cannot answer afterwards; load it again to use it.

    >>> import activation_oracles as ao
    >>> target = ao.load_model("smollm2-135m")                        # doctest: +SKIP
    >>> oracle = ao.load_oracle("path/to/oracle_dir", base=target)    # doctest: +SKIP
    >>> ao.unload_oracle(oracle)                                      # doctest: +SKIP
    """
    name = getattr(oracle, "adapter", None)
    model = getattr(oracle, "model", None)
    if name is None or model is None:
        raise AdapterError(f"{oracle!r} has no adapter to unload (an untrained oracle uses the bare base model); "
                           "pass an oracle returned by ao.load_oracle(...).")
    if name not in adapter_names(model.hf):
        raise AdapterError(f"adapter {name!r} is not loaded on {model.name!r} (already unloaded?); loaded adapters "
                           f"are {sorted(adapter_names(model.hf))}.")
    remove_adapter(model.hf, name)


def attach_adapter(base: Model, folder: Path, name: str, *, index: AdapterIndex | None = None,
                   tensors: dict[str, Any] | None = None) -> None:
    """Add the LoRA adapter in ``folder`` to ``base.hf`` in place under ``name``, all or nothing.

    The folder is checked completely first (:mod:`.adapter_checks`); if attaching still fails,
    every LoRA layer added is removed again and flags put back, so ``base`` is as it was
    (its ``state_dict``, modules and outputs) and a retry starts clean.
    """
    index = index if index is not None else read_adapter_index(folder)
    check_adapter_fits(index, base.hf, base.name)
    if not isinstance(name, str) or not name or "." in name:
        raise AdapterError(f"adapter name {name!r} is not usable as a PEFT adapter name; expected a non-empty "
                           "string without dots.")
    if name in adapter_names(base.hf):
        raise AdapterError(f"an adapter named {name!r} is already loaded on {base.name!r}; load the oracle on a "
                           "fresh base model, unload the other one (ao.unload_oracle), or give it another "
                           "adapter_name in oracle_config.json.")
    tensors = tensors if tensors is not None else load_adapter_tensors(index)
    before = _Before(base.hf)
    try:
        _inject(base.hf, name, index.config, tensors)
    except BaseException:
        before.restore(name)
        raise
    # LoRA injection freezes every other parameter; the caller's training flags are theirs to keep.
    before.restore_flags()


def _inject(hf: Any, name: str, adapter_cfg: dict[str, Any], tensors: dict[str, Any]) -> None:
    import torch
    from peft import LoraConfig, PeftModel, inject_adapter_in_model, set_peft_model_state_dict

    fields = {k: v for k, v in adapter_cfg.items() if k in LoraConfig.__dataclass_fields__ and k not in IGNORED}
    lora_cfg = LoraConfig(**{**fields, "inference_mode": True})
    cuda = sorted({p.device.index or 0 for p in hf.parameters() if p.device.type == "cuda"})
    # PEFT initialises the new matrices (drawing random numbers) before the file's values replace
    # them; a forked RNG keeps the caller's random stream where it was.
    with torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")  # shared bases
        if isinstance(hf, PeftModel):
            hf.add_adapter(name, lora_cfg)
            state = dict(tensors)
        else:
            # Inject into the plain model so the caller's object itself carries the adapter (one copy of weights).
            inject_adapter_in_model(lora_cfg, hf, adapter_name=name)
            state = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
        set_peft_model_state_dict(hf, state, adapter_name=name)
    # Every tensor of the file must now be in the model, value for value (PEFT skips keys it cannot place).
    params = dict(hf.named_parameters())
    for key, value in state.items():
        target = _ADAPTER_KEY.sub(rf"\g<part>.{name}\g<leaf>", key)
        got = params.get(target)
        if got is None or got.shape != value.shape or not torch.equal(got.detach().cpu(), value.to(got.dtype)):
            raise AdapterError(f"adapter tensor {key!r} did not load into the model (expected parameter {target!r}); "
                               "the adapter does not fit this model.")


_ADAPTER_KEY = re.compile(r"(?P<part>\.lora_(?:embedding_)?[AB])(?P<leaf>\.weight|\.bias)?$")


def _layer_adapters(layer: Any) -> set[str]:
    names: set[str] = set()
    for attr in getattr(layer, "adapter_layer_names", ()):
        table = getattr(layer, attr, None)
        if hasattr(table, "keys"):
            names.update(table.keys())
    return names


def remove_adapter(hf: Any, name: str, *, keep: frozenset[int] = frozenset()) -> None:
    """Delete adapter ``name`` from every LoRA layer of ``hf``; unwrap layers left with no adapter.

    ``keep`` holds ids of LoRA layers that existed before (never unwrapped, even when empty).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    # PEFT's delete re-activates another adapter on each layer (and makes it trainable): put the
    # remaining adapters' switches and flags back as they were.
    layers = [(layer, bool(layer.disable_adapters), [a for a in layer.active_adapters if a != name])
              for layer in tuner_layers(hf)]
    flags = [(p, p.requires_grad) for p in hf.parameters()]
    with warnings.catch_warnings():  # PEFT warns when the deleted adapter was the active one
        warnings.simplefilter("ignore")
        for layer, _, _ in layers:
            if name in _layer_adapters(layer):
                layer.delete_adapter(name)
        for layer, disabled, active in layers:
            if active:
                layer.set_adapter(active)
            layer.enable_adapters(not disabled)
    for p, flag in flags:
        p.requires_grad_(flag)
    for parent in list(hf.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer) and id(child) not in keep and not _layer_adapters(child):
                setattr(parent, child_name, child.get_base_layer())  # the caller's own module object again
    table = getattr(hf, "peft_config", None)
    if isinstance(table, dict):
        table.pop(name, None)
        if not table and "peft_config" in vars(hf):  # PEFT put it on the caller's plain model; leave none behind
            del vars(hf)["peft_config"]


class _Before:
    """What attaching may change on the caller's model, recorded so a failure can put it back."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf
        self.layers = [(layer, bool(layer.disable_adapters), list(layer.active_adapters)) for layer in tuner_layers(hf)]
        self.flags = [(p, p.requires_grad) for p in hf.parameters()]
        self.modes = [(m, m.training) for m in hf.modules()]
        self.had_config = "peft_config" in vars(hf)
        self.config = vars(hf).get("peft_config")
        self.config_items = dict(self.config) if isinstance(self.config, dict) else None

    def restore_flags(self) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)

    def restore(self, name: str) -> None:
        remove_adapter(self.hf, name, keep=frozenset(id(layer) for layer, _, _ in self.layers))
        for layer, disabled, active in self.layers:
            if active:
                layer.set_adapter(active)
            layer.enable_adapters(not disabled)
        self.restore_flags()
        for m, mode in self.modes:
            m.training = mode
        if self.had_config:
            vars(self.hf)["peft_config"] = self.config
            if isinstance(self.config, dict) and self.config_items is not None:
                self.config.clear()
                self.config.update(self.config_items)
        else:
            vars(self.hf).pop("peft_config", None)
