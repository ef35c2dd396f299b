"""Oracles in the reference's published format: a bare PEFT LoRA adapter, no ``oracle_config.json``.

The reference code (github.com/adamkarvonen/activation_oracles, ``nl_probes``) publishes each
trained oracle as a PEFT adapter folder or hub repo: ``adapter_config.json`` +
``adapter_model.safetensors`` (its hub repos also carry the base model's ``config.json`` and
tokenizer files, which are not read here). Everything about *how* activations enter the oracle
is fixed in that code rather than stored with the adapter, so :func:`reference_config` rebuilds
an :class:`~.config.OracleConfig` from the reference's conventions:

- placeholder ``" ?"``, one per activation vector, consecutive (``SPECIAL_TOKEN``);
- one user turn ``"Layer: {L}\\n" + " ?" * K + " \\n" + question`` (``get_introspection_prefix``),
  rendered with the oracle's chat template as a lone user turn (the template's own default
  system prompt, if it has one, stays) with ``add_generation_prompt=True`` and
  ``enable_thinking=False`` (``create_training_datapoint``);
- norm-matched addition ``h + c * ||h|| * v / ||v||`` on the output of decoder block 1
  (``hook_onto_layer = 1``), ``c = 1`` (``steering_coefficient``), prompt pass only;
- trained on source layers at 25/50/75% depth; ``ao.capture`` reads 50% by default, the
  reference's evaluation depth;
- the base model is the adapter's ``base_model_name_or_path``.

Every one of these settings is an assumption (the adapter cannot confirm it), so the loaded
oracle records them in ``oracle.config.origin`` (``{"format": "reference", "assumed": {...}}``),
shows ``format='reference'`` in its repr, and the first load of each folder in a process logs
a notice listing them (logger ``activation_oracles.reference_format``).

The same safety checks as for our own oracles apply before anything is attached: safetensors
only, plain LoRA only, every tensor's shape and module checked against the base model.

>>> REFERENCE_SETTINGS["injection_layer"], REFERENCE_SETTINGS["placeholder"], REFERENCE_SETTINGS["coeff"]
(1, ' ?', 1.0)
>>> REFERENCE_SETTINGS["prompt_template"].format(layer=18, placeholders=" ?" * 3, question="Why?")
'Layer: 18\\n ? ? ? \\nWhy?'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .adapter_checks import (ADAPTER_CONFIG, ADAPTER_FILE, check_adapter_fits, load_adapter_tensors,
                             read_adapter_index)
from .adapter_source import check_adapter_files, warn_if_other_base
from .config import OracleConfig
from .errors import AdapterError
from .models import Model, as_model, load_model, resolve_dtype

FORMAT = "reference"
REFERENCE_CODE = "github.com/adamkarvonen/activation_oracles"
ORACLE_CONFIG = "oracle_config.json"  # our own format's file; its absence is what marks the reference format

#: The reference's conventions, as OracleConfig fields. Sources in the reference code: SPECIAL_TOKEN,
#: get_introspection_prefix, hook_onto_layer, steering_coefficient, layer_percents, and the
#: apply_chat_template call of create_training_datapoint.
REFERENCE_SETTINGS: dict[str, Any] = {
    "placeholder": " ?",
    "prompt_template": "Layer: {layer}\n{placeholders} \n{question}",
    "injection_layer": 1,
    "mode": "norm_add",
    "coeff": 1.0,
    "source_layer_percents": (25.0, 50.0, 75.0),
    "system_prompt": None,
    "chat_template_kwargs": {"enable_thinking": False},
    "activation_means": None,
    "activation_scales": None,
}

#: Why each setting is what it is: shown in the notice and stored with the record.
_WHY: dict[str, str] = {
    "placeholder": "one ' ?' token per activation vector",
    "prompt_template": "'Layer: {L}\\n' + ' ?' * K + ' \\n' + question, one user turn",
    "injection_layer": "vectors added to the output of decoder block 1",
    "mode": "norm-matched addition h + c*||h||*v/||v||",
    "coeff": "c = 1",
    "source_layer_percents": "trained on 25/50/75% depth (read 50% by default)",
    "system_prompt": "no system turn of its own (the chat template's default, if any, stays)",
    "chat_template_kwargs": "chat template rendered with enable_thinking=False",
    "activation_means": "vectors injected as captured (no centring)",
    "activation_scales": "no per-channel scaling",
}

_log = logging.getLogger(__name__)
_ANNOUNCED: set[str] = set()


def is_reference_dir(folder: Path) -> bool:
    """Whether ``folder`` holds an adapter without our ``oracle_config.json`` (the reference's format).

    A folder with neither ``adapter_config.json`` nor ``oracle_config.json`` is not claimed here,
    so the caller's own "missing file" message applies to it.
    """
    folder = Path(folder)
    return not (folder / ORACLE_CONFIG).is_file() and \
        ((folder / ADAPTER_CONFIG).is_file() or (folder / ADAPTER_FILE).is_file())


def reference_config(base: Model, adapter_config: dict[str, Any], *, source: str,
                     notes: list[str] | None = None) -> OracleConfig:
    """The :class:`OracleConfig` of a reference-format adapter on ``base``, with its assumptions recorded.

    Args:
        base: the base model the adapter is attached to (gives ``n_layers``, ``d_model``).
        adapter_config: the adapter's checked ``adapter_config.json``.
        source: where the adapter came from (a folder or hub id), for the record.
        notes: extra lines for the record (e.g. a base-name mismatch).

    Returns:
        An ``OracleConfig`` with the reference's settings and ``origin`` saying which were assumed.
    """
    declared = adapter_config.get("base_model_name_or_path")
    lora = {k: adapter_config.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules")
            if adapter_config.get(k) is not None}
    if isinstance(lora.get("target_modules"), (set, tuple)):
        lora["target_modules"] = sorted(lora["target_modules"])
    assumed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in REFERENCE_SETTINGS.items()}
    origin = {"format": FORMAT, "code": REFERENCE_CODE, "adapter": source,
              "base_model_name_or_path": declared if isinstance(declared, str) else None,
              "assumed": assumed, "why": dict(_WHY), "notes": list(notes or [])}
    return OracleConfig(
        base_model=declared if isinstance(declared, str) and declared.strip() else base.name,
        n_layers=base.n_layers, d_model=base.d_model, adapter_name="oracle",
        training={"format": FORMAT, "recorded": False,
                  "note": f"trained by the reference code ({REFERENCE_CODE}); the adapter stores no training record"},
        lora=lora, origin=origin, **REFERENCE_SETTINGS)


def _announce(folder: Path, config: OracleConfig) -> None:
    key = str(folder.resolve())
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    lines = [f"  {k} = {v!r}  ({_WHY[k]})" for k, v in REFERENCE_SETTINGS.items()]
    extra = [f"  note: {n}" for n in (config.origin or {}).get("notes", [])]
    _log.warning("oracle %s has no %s: loaded in the reference format (%s), assuming its conventions:\n%s%s\n"
                 "They are recorded in oracle.config.origin; override one with oracle.with_config(...).",
                 folder, ORACLE_CONFIG, REFERENCE_CODE, "\n".join(lines), "".join("\n" + e for e in extra))


def _declared_base(declared: str, dtype: Any, device: Any) -> Model:
    """The adapter's declared base: ``ao.load_model(declared)``, or the tiny random test model when it names
    that (``"tiny-llama"``, which exists on no hub; the adapter's shapes are still checked against it)."""
    import torch

    from .tiny import TINY_NAME, tiny_model

    if declared in ("tiny", TINY_NAME):
        m = tiny_model(dtype=resolve_dtype(dtype) or torch.float32)
        if device is not None:
            m.hf.to(device)
        return m
    return load_model(declared, dtype=dtype, device=device)


def load_reference_oracle(folder: str | os.PathLike[str], *, base: Any = None, dtype: Any = None,
                          device: Any = None, source: str | None = None) -> Any:
    """Load a reference-format oracle folder (adapter files only); see the module doc.

    Args:
        folder: a directory holding ``adapter_config.json`` and ``adapter_model.safetensors``.
        base: a loaded base model to attach the adapter to (shared weights, as in ``ao.load_oracle``).
            Without it, the adapter's ``base_model_name_or_path`` is loaded with ``ao.load_model``.
        dtype, device: passed to ``ao.load_model`` when the base is loaded here.
        source: what the user passed (e.g. a hub id), recorded instead of the folder.

    Returns:
        An :class:`~activation_oracles.ActivationOracle` whose ``config.origin`` records the assumptions.

    Raises:
        UnsafeFileError: the weights exist only as a pickle.
        AdapterError: a file is missing or damaged, the adapter is not plain LoRA, it does not fit the
            base (modules or shapes), no base is given and the adapter names none, or the placeholder
            is not one token for the base's tokenizer. Nothing is attached to ``base`` in any of these cases.
        OfflineError / ModelSpecError: from ``ao.load_model`` when the declared base cannot be loaded.
    """
    from .loading import attach_oracle

    folder = Path(folder)
    check_adapter_files(folder, what="reference-format oracle")
    # Everything on disk is read and checked before the base model is loaded or touched.
    index = read_adapter_index(folder)
    tensors = load_adapter_tensors(index)
    declared = index.config.get("base_model_name_or_path")
    notes: list[str] = []
    if base is None:
        if not isinstance(declared, str) or not declared.strip():
            raise AdapterError(f"oracle {str(folder)!r} is a bare LoRA adapter (reference format) whose "
                               f"{ADAPTER_CONFIG} names no base model (base_model_name_or_path is "
                               f"{declared!r}); pass its base model: ao.load_oracle(dir, base=ao.load_model(NAME)).")
        base_model = _declared_base(declared, dtype, device)
    else:
        base_model = as_model(base)
        check_adapter_fits(index, base_model.hf, base_model.name)  # shapes decide; a name alone only warns
        note = warn_if_other_base(declared, base_model.name, what=f"oracle adapter {str(folder)!r}")
        if note:
            notes.append(note)
    config = reference_config(base_model, index.config, source=source or str(folder), notes=notes)
    oracle = attach_oracle(base_model, folder, config, index, tensors)  # checks fit first; all or nothing
    _announce(folder, config)
    return oracle
