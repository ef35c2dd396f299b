"""``OracleConfig``: everything about how an oracle reads activations, stored with the oracle.

Template, placeholder, injection layer, mode and coefficient are data, not
constants in code: an oracle directory's ``oracle_config.json`` is exactly this
dataclass serialised, so an oracle trained with other settings loads correctly.

>>> cfg = OracleConfig(base_model="smollm2-135m", n_layers=30, d_model=576)
>>> cfg.injection_layer, cfg.mode, cfg.coeff, cfg.placeholder
(1, 'norm_add', 1.0, ' ?')
>>> OracleConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class OracleConfig:
    """How an activation oracle is prompted and how activations enter it."""

    base_model: str = _f("", "Name of the base model the oracle (and its adapter) is built on.")
    n_layers: int = _f(0, "Depth of the base model, checked against activations' provenance.")
    d_model: int = _f(0, "Residual width of the base model; activations must match it.")
    source_layer_percents: tuple[float, ...] = _f((25.0, 50.0, 75.0), "Depths (percent) the oracle was trained to read.")
    injection_layer: int = _f(1, "Oracle block whose output receives the vectors (the reference uses block 1).")
    mode: str = _f("norm_add", "Injection mode: norm_add (reference), add or replace.")
    coeff: float = _f(1.0, "Injection coefficient c in h + c*||h||*v/||v||.")
    placeholder: str = _f(" ?", "Placeholder text; must tokenize to exactly one token.")
    prompt_template: str = _f("Layer: {layer}\n{placeholders} \n{question}",
                              "User-turn template; {layer}, {placeholders} and {question} are filled in.")
    activation_means: dict[int, tuple[float, ...]] | None = _f(
        None, "Mean residual of each source layer (key: layer index), subtracted from every captured "
              "vector before injection (None: vectors go in as captured). Set by training with "
              "model.center_activations; difference vectors are never centred.")
    activation_scales: dict[int, tuple[float, ...]] | None = _f(
        None, "Per-channel scale (standard deviation) of each source layer; centred vectors are divided by "
              "it before injection (None: centred only). Needs activation_means for the same layers. Set by "
              "training with model.standardize_activations.")
    system_prompt: str | None = _f(
        "", "System turn of the oracle's prompt: '' for none (an explicit empty system turn where the chat "
            "template would insert a default, e.g. SmolLM2's), a string for that text, None for the template's "
            "own default. Oracle directories written before this setting load with None, the prompt they "
            "were trained with.")
    chat_template_kwargs: dict[str, Any] | None = _f(
        None, "Extra keyword arguments for the chat template when the oracle prompt is rendered (None: none), "
              "e.g. {'enable_thinking': False}, which the reference passes so Qwen3 prompts get an empty "
              "thinking block. Templates ignore keywords they do not use.")
    max_positions: int = _f(512, "Most activation vectors accepted in one prompt.")
    adapter_name: str = _f("oracle", "Name of the oracle's LoRA adapter inside a shared PEFT model.")
    training: dict[str, Any] = _f(None, "Summary of the training run and data mixture (None: untrained).",)
    lora: dict[str, Any] = _f(None, "LoRA settings of the adapter (None: untrained).")
    origin: dict[str, Any] | None = _f(
        None, "Where these settings came from when the oracle's directory did not store them (None: from "
              "oracle_config.json or built in code). A reference-format adapter (adapter files only) records "
              "{'format': 'reference', 'adapter': ..., 'base_model_name_or_path': ..., 'assumed': {field: value}}: "
              "every setting listed under 'assumed' is the reference's convention, not read from the adapter.")

    def __post_init__(self) -> None:
        if self.mode not in ("norm_add", "add", "replace"):
            raise ConfigError(f"mode={self.mode!r}; expected 'norm_add', 'add' or 'replace'.")
        for key in ("{layer}", "{placeholders}", "{question}"):
            if key not in self.prompt_template:
                raise ConfigError(f"prompt_template {self.prompt_template!r} lacks {key}; it needs "
                                  "{layer}, {placeholders} and {question}.")
        if self.max_positions < 1:
            raise ConfigError(f"max_positions={self.max_positions}; expected >= 1.")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ConfigError(f"system_prompt={self.system_prompt!r} ({type(self.system_prompt).__name__}); expected "
                              "a string ('' for no system turn) or null for the chat template's default.")
        if self.chat_template_kwargs is not None and not _TYPES["chat_template_kwargs"][0](self.chat_template_kwargs):
            raise ConfigError(f"chat_template_kwargs={self.chat_template_kwargs!r}; expected None or a dict of "
                              "keyword -> value, e.g. {'enable_thinking': False}.")
        clash = sorted(set(self.chat_template_kwargs or {}) & _TEMPLATE_OWN_ARGS)
        if clash:
            raise ConfigError(f"chat_template_kwargs sets {clash}, which the oracle's prompt rendering sets itself; "
                              "keep only template variables there (e.g. {'enable_thinking': False}).")
        object.__setattr__(self, "source_layer_percents", tuple(float(p) for p in self.source_layer_percents))
        object.__setattr__(self, "activation_means", self._per_layer("activation_means", self.activation_means))
        object.__setattr__(self, "activation_scales", self._per_layer("activation_scales", self.activation_scales))
        if self.activation_scales is not None:
            means = self.activation_means or {}
            if set(self.activation_scales) != set(means):
                raise ConfigError(f"activation_scales has layers {sorted(self.activation_scales)} but activation_means "
                                  f"has {sorted(means)}; standardising needs a mean and a scale for every layer.")
            bad_scale = {k: min(v) for k, v in self.activation_scales.items() if not all(0 < x < math.inf for x in v)}
            if bad_scale:
                raise ConfigError(f"activation_scales has non-positive or non-finite entries (layer: smallest) "
                                  f"{bad_scale}; expected every scale > 0 and finite.")

    def _per_layer(self, name: str, table: Any) -> dict[int, tuple[float, ...]] | None:
        if table is None:
            return None
        # JSON turns the layer keys into strings: normalise both forms to {int: tuple of floats}
        out = {int(k): tuple(float(x) for x in v) for k, v in dict(table).items()}
        bad = {k: len(v) for k, v in out.items() if self.d_model and len(v) != self.d_model}
        if bad:
            raise ConfigError(f"{name} has vectors of length {bad} (layer: length); expected "
                              f"d_model={self.d_model} for every layer.")
        return out

    def centre(self, vectors_KD: Any, layer: int) -> Any:
        """``vectors_KD`` minus the stored mean of ``layer``, divided by its scale where one is stored.

        Unchanged when the oracle stores no means. Why: a residual vector is mostly a component
        shared by every token (on SmolLM2, two channels hold ~70% of its energy); norm matching
        then scales the informative rest down to a few percent of the injected norm. Subtracting
        the mean injects what varies; dividing by each channel's spread keeps the few
        high-variance channels from drowning the others.
        """
        if self.activation_means is None:
            return vectors_KD
        if layer not in self.activation_means:
            from .errors import ActivationsMismatchError

            raise ActivationsMismatchError(
                f"this oracle centres activations with the means of layers {sorted(self.activation_means)} but "
                f"was given layer {layer}; capture at one of those layers, or use "
                "oracle.with_config(activation_means=None, activation_scales=None) to inject them as captured.")
        out = vectors_KD.float() - self._stat_tensor("mean", layer, vectors_KD.device)
        if self.activation_scales is not None:
            out = out / self._stat_tensor("scale", layer, vectors_KD.device)
        return out

    def _stat_tensor(self, kind: str, layer: int, device: Any) -> Any:
        """The stored mean or scale of ``layer`` as a float32 tensor on ``device``, built once per config
        (the trainer centres every micro-batch, the oracle every call: the lists stay the stored form)."""
        import torch

        cache = self.__dict__.get("_stat_tensors")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_stat_tensors", cache)  # frozen dataclass: a cache, not a field
        key = (kind, layer, str(device))
        if key not in cache:
            values = (self.activation_means if kind == "mean" else self.activation_scales)[layer]
            cache[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return cache[key]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source_layer_percents"] = list(self.source_layer_percents)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OracleConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"an oracle config must be a JSON object of settings, got a {type(data).__name__}; "
                              "expected an oracle_config.json as written by `ao train`.")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown oracle config keys {unknown}; valid keys are {sorted(valid)}.")
        for key, value in data.items():
            _check_type(key, value)
        if "system_prompt" not in data:  # written before the setting existed: trained with the template's default
            data = {**data, "system_prompt": None}
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> OracleConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{str(path)!r} is not valid JSON ({exc}); expected an oracle_config.json.") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{str(path)!r}: {exc}") from None


# apply_chat_template's own arguments: the prompt code sets these, a config must not.
_TEMPLATE_OWN_ARGS = frozenset({"conversation", "tokenize", "add_generation_prompt", "continue_final_message",
                                "return_dict", "return_tensors", "return_assistant_tokens_mask", "chat_template",
                                "padding", "truncation", "max_length", "tools", "documents", "tokenizer_kwargs"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_vectors(v: Any) -> bool:
    """``{layer: [numbers]}``, the layer as an int or (after JSON) a string of one."""
    return isinstance(v, dict) and all(
        (_is_int(k) or (isinstance(k, str) and k.lstrip("-").isdigit()))
        and isinstance(x, (list, tuple)) and all(_is_num(e) for e in x) for k, x in v.items())


# What each field of an oracle_config.json must be (a file is data from elsewhere: wrong types must not
# reach the code as, e.g., a string where a layer index is expected).
_TYPES: dict[str, tuple[Any, str]] = {
    "base_model": (lambda v: isinstance(v, str), "a string"),
    "n_layers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "d_model": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "source_layer_percents": (lambda v: isinstance(v, (list, tuple)) and all(_is_num(x) for x in v),
                              "a list of numbers"),
    "injection_layer": (_is_int, "an integer"),
    "mode": (lambda v: isinstance(v, str), "a string"),
    "coeff": (lambda v: _is_num(v) and math.isfinite(v), "a finite number"),
    "placeholder": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "prompt_template": (lambda v: isinstance(v, str), "a string"),
    "activation_means": (lambda v: v is None or _is_vectors(v), "null or an object of layer -> list of numbers"),
    "activation_scales": (lambda v: v is None or _is_vectors(v), "null or an object of layer -> list of numbers"),
    "system_prompt": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "chat_template_kwargs": (lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) for k in v)),
                             "null or an object of keyword -> value"),
    "max_positions": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "adapter_name": (lambda v: isinstance(v, str) and v != "" and "." not in v,
                     "a non-empty string without dots (a PEFT adapter name)"),
    "training": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "lora": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "origin": (lambda v: v is None or isinstance(v, dict), "null or an object"),
}


def _check_type(key: str, value: Any) -> None:
    check, expected = _TYPES[key]
    if not check(value):
        raise ConfigError(f"oracle config field {key!r} is {value!r} ({type(value).__name__}); expected {expected}. "
                          "Fix the value in oracle_config.json, or re-export the oracle with `ao train`.")
