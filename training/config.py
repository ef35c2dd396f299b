"""The training configuration: one frozen dataclass tree, serialised as TOML or YAML.

Sections mirror the parts of a run: ``model`` (which base model, which target),
``lora`` (the adapter), ``optim`` (optimiser, schedule, batch, precision),
``data`` (the mixture of dataset builders and its limits), ``checkpoint``,
``eval`` and ``output``. Files and ``--set`` overrides are only ways of filling
this tree: every key is checked, and an unknown one raises a :class:`ConfigError`
that lists the valid keys of its section.

>>> cfg = TrainConfig()
>>> cfg.lora.r, cfg.optim.lr, cfg.optim.warmup_fraction
(64, 1e-05, 0.1)
>>> cfg2 = apply_overrides(cfg, ["optim.lr=3e-4", "lora.target_modules=q_proj,v_proj"])
>>> cfg2.optim.lr, cfg2.lora.target_modules
(0.0003, ('q_proj', 'v_proj'))
>>> TrainConfig.from_toml(cfg2.to_toml()) == cfg2
True
>>> apply_overrides(cfg, ["optim.lrr=1"])
Traceback (most recent call last):
  ...
activation_oracles.errors.ConfigError: unknown key 'lrr' in [optim]; valid keys are: batch_size, betas, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .toml_writer import dumps_toml


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ------------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSection:
    """Which model becomes the oracle and which model the activations come from."""

    name: str = _f("smollm2-135m", "Oracle base model: 'smollm2-135m' (embedded), 'tiny' (a tiny random Llama "
                                   "with the SmolLM2 tokenizer), a local directory or a hub id.")
    target: str = _f("", "Separate target model ('' = the oracle's own base with the adapter disabled, one copy "
                         "of the weights). Must have the base model's depth and width.")
    dtype: str = _f("fp32", "Weight dtype of the base model: fp32, bf16 or fp16 (LoRA weights stay fp32).")
    device: str = _f("auto", "'auto' (cuda:LOCAL_RANK when available, else cpu), 'cpu', 'cuda', 'cuda:1'...")
    injection_layer: int = _f(1, "Oracle block whose output receives the activations (the reference uses 1).")
    injection_coeff: float = _f(1.0, "Injection coefficient c in h + c*||h||*v/||v|| during training and in the "
                                     "exported oracle (the reference uses 1).")
    center_activations: bool = _f(False, "Subtract each source layer's mean activation (measured on 256 "
                                         "examples of the mixture, stored with the oracle) before injection.")
    standardize_activations: bool = _f(False, "Also divide each centred vector by its source layer's per-channel "
                                              "standard deviation (same examples; stored with the oracle), so a "
                                              "few high-variance channels do not drown the rest. Needs "
                                              "center_activations = true.")
    oracle_system_prompt: str = _f("", "System turn of the oracle's prompts ('' = none: an explicit empty turn where "
                                       "the chat template would insert its default); stored with the oracle.")
    template_system_prompt: bool = _f(False, "Use the chat template's own default system turn in the oracle's "
                                             "prompts instead (as oracles trained before oracle_system_prompt "
                                             "existed did; SmolLM2's costs ~20 tokens a prompt).")
    init_adapter: str = _f("", "Warm start: an oracle directory written by `ao train` whose LoRA weights the run "
                               "starts from (fresh optimiser and schedule); its activation statistics are reused "
                               "instead of measured. lora.r and lora.target_modules must match its adapter. "
                               "'' = a fresh LoRA.")
    tiny_layers: int = _f(4, "Depth of the tiny random model (name = 'tiny' only).")
    tiny_d_model: int = _f(64, "Width of the tiny random model (name = 'tiny' only).")
    tiny_seed: int = _f(0, "Initialisation seed of the tiny random model (name = 'tiny' only).")


@dataclass(frozen=True)
class LoraSection:
    """The LoRA adapter trained on the oracle (PEFT)."""

    r: int = _f(64, "LoRA rank (reference: 64).")
    alpha: float = _f(128.0, "LoRA alpha (reference: 128).")
    dropout: float = _f(0.05, "LoRA dropout (reference: 0.05).")
    target_modules: tuple[str, ...] = _f(("all-linear",), "Modules that get adapters: 'all-linear' (every "
                                                          "linear layer but the LM head) or module names.")


@dataclass(frozen=True)
class OptimSection:
    """Optimiser, schedule, batch and precision."""

    lr: float = _f(1e-5, "AdamW learning rate (reference: 1e-5).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    betas: tuple[float, ...] = _f((0.9, 0.999), "AdamW betas.")
    warmup_fraction: float = _f(0.1, "Fraction of the steps with linear warm-up; linear decay to 0 afterwards.")
    grad_clip: float = _f(1.0, "Gradient-norm clip (0 = off).")
    loss_weighting: str = _f("token", "How answers weigh in a batch's loss: 'token' (mean over every answer token "
                                      "of the batch, the reference's; long answers dominate) or 'example' (each "
                                      "example's own token mean, then the mean over examples: a 2-token yes/no "
                                      "answer weighs as much as a 13-token context prediction).")
    batch_size: int = _f(16, "Examples per optimiser step, over all processes and accumulation steps.")
    grad_accum: int = _f(1, "Micro-batches per optimiser step (per process).")
    steps: int = _f(0, "Optimiser steps; 0 = ceil(data.n_examples / batch_size).")
    bf16: bool = _f(True, "bf16 autocast for the forward passes (CPU and CUDA).")
    seed: int = _f(0, "Seed of data order, LoRA initialisation and dropout.")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms(True) (bit-exact resume on GPU).")
    num_threads: int = _f(0, "torch CPU threads (0 = torch's default).")
    skip_nonfinite: bool = _f(True, "A step whose loss or gradient norm is NaN/inf changes no weight (its gradient "
                                    "is zeroed, it is logged and counted); 10 such steps in a row stop the run. "
                                    "False: the first one stops the run.")
    max_minutes: float = _f(0.0, "Wall-clock budget of this invocation in minutes (0 = none): past it the run "
                                 "stops at the next log step and writes its oracle as if it had ended there "
                                 "(for leased machines; the lr schedule stays the full run's).")


@dataclass(frozen=True)
class SourceSpec:
    """One dataset builder in the mixture: its kind, its weight, and the builder's own parameters."""

    kind: str = _f("", "Builder kind (context_prediction, classification, families, system_prompt_qa, on_policy) or "
                       "'package.module:Class' (a class with examples(tokenizer, rng)).")
    weight: float = _f(1.0, "Relative sampling weight in the mixture.")
    params: dict[str, Any] = _f({}, "Keyword arguments of the builder (written inline in the source's table).")


@dataclass(frozen=True)
class DataSection:
    """The training mixture and its limits."""

    sources: tuple[SourceSpec, ...] = _f((), "The builders of the mixture ([[data.sources]] tables).")
    n_examples: int = _f(1000, "Training examples in the run (reference: ~1M).")
    layer_percents: tuple[float, ...] = _f((25.0, 50.0, 75.0), "Source depths (percent, each in (0, 100)) the "
                                                                "builders sample from.")
    max_length: int = _f(256, "Longest target context in tokens; longer examples are skipped (and counted).")
    max_positions: int = _f(64, "Most activation vectors per example; examples with more are skipped.")
    group_batches: int = _f(16, "Batches per length-grouping pool (1 = no grouping).")
    prefetch: int = _f(-1, "Steps of batches built ahead on a background thread (0 = inline; -1 = auto: 2 on "
                           "CUDA, 0 on CPU, where the thread would compete with the math for the cores).")


@dataclass(frozen=True)
class CheckpointSection:
    """Periodic, atomic, checksummed checkpoints."""

    every: int = _f(100, "Steps between checkpoints (0 = only at the end).")
    keep: int = _f(2, "Checkpoints kept (the older ones are the fallback for a corrupted latest).")


@dataclass(frozen=True)
class EvalSection:
    """Periodic evaluation on held-out examples."""

    every: int = _f(100, "Steps between evaluations (0 = only at the end).")
    n_examples: int = _f(64, "Held-out examples per evaluation.")
    sources: tuple[SourceSpec, ...] = _f((), "Held-out builders ([[eval.sources]]); empty = the training "
                                             "mixture with another seed.")
    seed: int = _f(12345, "Seed of the held-out stream.")
    batch_size: int = _f(16, "Batch size of evaluation forward passes.")
    max_new_tokens: int = _f(24, "Longest greedy answer for the exact-match metric.")


@dataclass(frozen=True)
class OutputSection:
    """Where and how the run reports."""

    dir: str = _f("runs/oracle", "Output directory (the oracle directory at the end).")
    log_every: int = _f(10, "Steps between metric lines in metrics.jsonl.")
    progress: bool = _f(True, "Progress bars with ETAs on a terminal: steps (loss, tokens/s), rollouts, activation "
                              "statistics, evaluations. AO_PROGRESS=always draws them in logs too.")
    tensorboard: bool = _f(True, "Also write TensorBoard events when tensorboard is installed.")


@dataclass(frozen=True)
class TrainConfig:
    """The whole training run."""

    model: ModelSection = _f(ModelSection(), "The base model and the target.")
    lora: LoraSection = _f(LoraSection(), "The LoRA adapter.")
    optim: OptimSection = _f(OptimSection(), "Optimiser, schedule, batch, precision.")
    data: DataSection = _f(DataSection(), "The mixture of dataset builders.")
    checkpoint: CheckpointSection = _f(CheckpointSection(), "Checkpoints.")
    eval: EvalSection = _f(EvalSection(), "Held-out evaluation.")
    output: OutputSection = _f(OutputSection(), "Output directory and logging.")

    def __post_init__(self) -> None:
        validate(self)

    # -- (de)serialisation: training/config_io.py ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from .config_io import to_plain

        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
        """Build a config from nested dicts; keys absent from ``data`` keep ``base``'s (or the default) values."""
        from .config_io import from_plain

        return from_plain(cls, data, base if base is not None else cls(), "")

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    @classmethod
    def from_toml(cls, text: str, *, base: TrainConfig | None = None) -> TrainConfig:
        from .config_io import config_from_toml

        return config_from_toml(cls, text, base)

    def to_yaml(self) -> str:
        from .config_io import yaml_module

        return yaml_module().safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, base: TrainConfig | None = None) -> TrainConfig:
        from .config_io import config_from_yaml

        return config_from_yaml(cls, text, base)

    @classmethod
    def load(cls, path: str | Path, *, base: TrainConfig | None = None) -> TrainConfig:
        """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file (on top of ``base``)."""
        from .config_io import load_config

        return load_config(cls, path, base)

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.write_text(self.to_yaml() if p.suffix.lower() in (".yaml", ".yml") else self.to_toml())


# ------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------

def validate(cfg: TrainConfig) -> None:
    """Check values that a type alone cannot; raise :class:`ConfigError` naming the key."""
    def need(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r}; expected {expected}.")

    m, lo, o, d = cfg.model, cfg.lora, cfg.optim, cfg.data
    need(bool(m.name.strip()), "model.name", m.name, "a model ('smollm2-135m', 'tiny', a directory or a hub id)")
    need(m.injection_layer >= 0, "model.injection_layer", m.injection_layer, "a block index >= 0")
    # coeff 0 would train an oracle that never sees an activation: that is the control, not a recipe.
    need(m.injection_coeff > 0 and math.isfinite(m.injection_coeff), "model.injection_coeff", m.injection_coeff,
         "a positive finite number (1 = norm-matched, the reference)")
    need(m.center_activations or not m.standardize_activations, "model.standardize_activations",
         m.standardize_activations, "false unless model.center_activations = true (set both to standardise)")
    need(m.tiny_layers >= 2 and m.tiny_d_model >= 8, "model.tiny_layers/tiny_d_model",
         (m.tiny_layers, m.tiny_d_model), "tiny_layers >= 2 and tiny_d_model >= 8")
    need(m.dtype.lower() in ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16"), "model.dtype", m.dtype,
         "fp32, bf16 or fp16")
    need(lo.r >= 1, "lora.r", lo.r, "an integer >= 1")
    # inf would pass "> 0" and scale every LoRA update to inf: the loss turns NaN at step 1 and the
    # message would blame the learning rate.
    need(lo.alpha > 0 and math.isfinite(lo.alpha), "lora.alpha", lo.alpha, "a positive finite number")
    need(0 <= lo.dropout < 1, "lora.dropout", lo.dropout, "a number in [0, 1)")
    need(len(lo.target_modules) >= 1 and all(t.strip() for t in lo.target_modules), "lora.target_modules",
         lo.target_modules, "'all-linear' or a list of module names")
    need(o.lr > 0 and math.isfinite(o.lr), "optim.lr", o.lr, "a positive finite number")
    need(0 <= o.weight_decay < math.inf, "optim.weight_decay", o.weight_decay, "a finite number >= 0")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "two numbers in [0, 1)")
    need(0 <= o.warmup_fraction < 1, "optim.warmup_fraction", o.warmup_fraction, "a number in [0, 1)")
    need(0 <= o.grad_clip < math.inf, "optim.grad_clip", o.grad_clip, "a finite number >= 0 (0 = no clipping)")
    need(o.loss_weighting in ("token", "example"), "optim.loss_weighting", o.loss_weighting, "'token' or 'example'")
    need(o.batch_size >= 1, "optim.batch_size", o.batch_size, "an integer >= 1")
    need(o.grad_accum >= 1, "optim.grad_accum", o.grad_accum, "an integer >= 1")
    need(o.steps >= 0, "optim.steps", o.steps, "an integer >= 0 (0 = from data.n_examples)")
    need(o.num_threads >= 0, "optim.num_threads", o.num_threads, "an integer >= 0")
    need(o.max_minutes >= 0 and math.isfinite(o.max_minutes), "optim.max_minutes", o.max_minutes,
         "minutes >= 0 (0 = no limit)")
    need(d.n_examples >= 1, "data.n_examples", d.n_examples, "an integer >= 1")
    need(len(d.layer_percents) >= 1, "data.layer_percents", d.layer_percents, "at least one depth, e.g. [25, 50, 75]")
    for p in d.layer_percents:
        if not (0 < p < 100):
            raise ConfigError(f"data.layer_percents holds {p}, outside (0, 100); layer percents are depths such "
                              "as 25, 50 or 75 (block int(n_layers * p / 100)).")
    need(d.max_length >= 1, "data.max_length", d.max_length, "an integer >= 1")
    need(d.max_positions >= 1, "data.max_positions", d.max_positions, "an integer >= 1")
    need(d.group_batches >= 1, "data.group_batches", d.group_batches, "an integer >= 1")
    need(d.prefetch >= -1, "data.prefetch", d.prefetch, "an integer >= -1 (-1 = auto)")
    for section, sources in (("data", d.sources), ("eval", cfg.eval.sources)):
        for i, s in enumerate(sources):
            need(bool(s.kind.strip()), f"{section}.sources[{i}].kind", s.kind, "a builder kind")
            need(s.weight > 0 and math.isfinite(s.weight), f"{section}.sources[{i}].weight", s.weight,
                 "a positive number")
    need(cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every, "an integer >= 0")
    need(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "an integer >= 1")
    need(cfg.eval.every >= 0, "eval.every", cfg.eval.every, "an integer >= 0")
    need(cfg.eval.n_examples >= 0, "eval.n_examples", cfg.eval.n_examples, "an integer >= 0")
    need(cfg.eval.batch_size >= 1, "eval.batch_size", cfg.eval.batch_size, "an integer >= 1")
    need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", cfg.eval.max_new_tokens, "an integer >= 1")
    need(bool(cfg.output.dir.strip()), "output.dir", cfg.output.dir, "a directory path")
    need(cfg.output.log_every >= 1, "output.log_every", cfg.output.log_every, "an integer >= 1")


def total_steps(cfg: TrainConfig) -> int:
    """Optimiser steps of the run: ``optim.steps`` or ``ceil(n_examples / batch_size)``."""
    return cfg.optim.steps or max(1, math.ceil(cfg.data.n_examples / cfg.optim.batch_size))


# Re-exported: the override and help helpers live with the file I/O (training/config_io.py).
from .config_io import apply_overrides, field_help, parse_value  # noqa: E402

__all__ = ["CheckpointSection", "DataSection", "EvalSection", "LoraSection", "ModelSection", "OptimSection",
           "OutputSection", "SourceSpec", "TrainConfig", "apply_overrides", "field_help", "parse_value",
           "total_steps", "validate"]
