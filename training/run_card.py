"""The run card: the README.md of an ``ao train`` output directory, written by us.

Why: PEFT's ``save_pretrained`` leaves a blank model-card template in the directory ("[More
Information Needed]" forty times). Someone who finds an oracle folder months later needs the
opposite: which base model it reads, how it was trained (the mixture and its weights, steps,
learning rate, LoRA rank, source depths, centring), how long it took, how well it did *beside
its controls*, and the two lines that load it. Everything here comes from the resolved config,
the trainer's training record and ``metrics.jsonl``; nothing is measured anew.

>>> print(_pct(0.7604), _duration(3725.0), _duration(42.4))
76.0% 1 h 2 min 42 s
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "last_eval", "run_card_markdown"]

#: First line of every card we write (PEFT's template has none): tells our README from another.
MARKER = "<!-- run card written by activation_oracles (ao train); regenerated at the end of each run -->"

_CONTROLS = (("", "oracle"), ("_shuffled", "shuffled activations"), ("_coeff0", "no activations (coeff 0)"))


def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}%" if isinstance(x, (int, float)) else "-"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, m = divmod(s // 60, 60)
    return f"{h} h {m} min" if h else f"{m} min {s % 60} s"


def _short(value: Any, width: int = 60) -> str:
    """``value`` on one line, at most ``width`` characters, safe inside a Markdown table cell."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 3] + "..."


def _records(metrics: Path) -> list[dict[str, Any]]:
    out = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def last_eval(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last record of ``metrics.jsonl`` holding evaluation figures (``eval/...``), or ``{}``."""
    for rec in reversed(records):
        if any(str(k).startswith("eval/") for k in rec):
            return dict(rec)
    return {}


def _recipe(cfg: Any, oc: Any, steps: Any) -> list[str]:
    o, lo, m, d = cfg.optim, cfg.lora, cfg.model, cfg.data
    layers = ", ".join(f"{p:g}% (block {int(oc.n_layers * p / 100)})" for p in d.layer_percents)
    if m.center_activations:
        centring = "centred" + (" and standardised per channel" if m.standardize_activations else "") + \
                   " (statistics of 256 mixture examples, stored in oracle_config.json)"
    else:
        centring = "none (raw residual vectors)"
    system = "the chat template's default" if m.template_system_prompt else \
        (f"`{_short(m.oracle_system_prompt)}`" if m.oracle_system_prompt else "none")
    rows = [
        ("base model", f"`{oc.base_model}` ({oc.n_layers} layers, d_model {oc.d_model})"
                       + (f"; target `{m.target}`" if m.target else "")),
        ("steps", f"{steps} x batch {o.batch_size}"
                  + (f" (grad accum {o.grad_accum})" if o.grad_accum > 1 else "")),
        ("optimiser", f"AdamW lr {o.lr:g}, {o.warmup_fraction:.0%} linear warm-up then linear decay, grad clip "
                      f"{o.grad_clip:g}, weight decay {o.weight_decay:g}" + (", bf16 autocast" if o.bf16 else "")),
        ("LoRA", f"r {lo.r}, alpha {lo.alpha:g}, dropout {lo.dropout:g}, on {', '.join(lo.target_modules)}"),
        ("source depths", layers),
        ("injection", f"after block {oc.injection_layer}, {oc.mode}, coeff {oc.coeff:g}"),
        ("centring", centring),
        ("oracle system prompt", system),
        ("seed", str(o.seed)),
    ]
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def _data(cfg: Any, training: Mapping[str, Any]) -> list[str]:
    specs = list(cfg.data.sources)
    mixture = (training.get("mixture") or {}).get("builders") or {}
    names = list(mixture) if len(mixture) == len(specs) else [s.params.get("name", s.kind) for s in specs]
    total = sum(float(s.weight) for s in specs) or 1.0
    lines = []
    if specs:
        lines += ["| source | kind | weight | share | examples | parameters |", "|---|---|---:|---:|---:|---|"]
        for name, spec in zip(names, specs):
            entry = mixture.get(name, {})
            count = entry.get("global_count", entry.get("count", "-"))
            params = ", ".join(f"{k}={_short(v, 40)}" for k, v in sorted(spec.params.items()) if k != "name")
            lines.append(f"| {name} | {spec.kind} | {float(spec.weight):g} | {float(spec.weight) / total:.0%} | "
                         f"{count} | {params or '-'} |")
    else:
        lines.append("Examples came from the caller (`Trainer(examples=...)`), not from `data.sources`.")
    data = training.get("data") or {}
    if data.get("used"):
        lines += ["", "Examples trained on, by source: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(data["used"].items())) + "."]
    if data.get("skipped"):
        lines += ["", "Skipped by the length filters: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(data["skipped"].items())) + "."]
    return lines


def _evaluation(ev: Mapping[str, Any]) -> list[str]:
    if not ev:
        return ["No held-out evaluation was run (`eval.n_examples = 0`)."]
    step = f" at step {ev['step']}" if "step" in ev else ""
    lines = [f"Held-out examples{step}: {ev.get('eval/n', '?')} (answer loss {ev.get('eval/loss', float('nan')):.4f}). "
             "The controls are the same oracle reading another example's activations (shuffled) and reading "
             "none (coeff 0): an oracle that reads activations beats both.", "",
             "| metric | n | " + " | ".join(label for _, label in _CONTROLS) + " |", "|---|---:|---:|---:|---:|"]
    if "eval/yes_no_acc" in ev:
        lines.append(f"| yes/no accuracy | {ev.get('eval/n_yes_no', '?')} | " +
                     " | ".join(_pct(ev.get(f"eval/yes_no_acc{suffix}")) for suffix, _ in _CONTROLS) + " |")
    if "eval/exact_match" in ev:
        n_exact = ev.get("eval/n_exact", "?")
        lines.append(f"| exact match (greedy) | {n_exact} | {_pct(ev['eval/exact_match'])} | - | - |")
    per_source: dict[str, dict[str, float]] = {}
    for key, value in ev.items():
        found = re.fullmatch(r"eval/(.+)/acc(_shuffled|_coeff0)?", str(key))
        if found:
            per_source.setdefault(found.group(1), {})[found.group(2) or ""] = value
    if per_source:
        lines += ["", "By source (accuracy):", "", "| source | " + " | ".join(label for _, label in _CONTROLS) + " |",
                  "|---|---:|---:|---:|"]
        for source in sorted(per_source):
            lines.append(f"| {source} | " + " | ".join(_pct(per_source[source].get(suffix))
                                                       for suffix, _ in _CONTROLS) + " |")
    return lines


def run_card_markdown(out_dir: Path, cfg: Any, oracle_config: Any, training: Mapping[str, Any]) -> str:
    """The README.md of a finished run in ``out_dir`` (reads its ``metrics.jsonl``).

    ``cfg`` is the resolved :class:`~.config.TrainConfig`, ``oracle_config`` the final
    :class:`~activation_oracles.config.OracleConfig`, ``training`` the training record
    saved in it (steps, examples, wall time, mixture summary, ...).
    """
    from activation_oracles import __version__

    records = _records(out_dir / "metrics.jsonl")
    ev = last_eval(records) or dict(training.get("eval") or {})
    train = [r for r in records if "loss" in r]
    folder = str(out_dir)
    base = oracle_config.base_model
    wall, train_s = float(training.get("wall_time_s") or 0), float(training.get("train_time_s") or 0)
    tok_s = (training.get("oracle_tokens") or 0) / train_s if train_s else 0.0
    final_loss = training.get("final_loss")
    lines = [
        MARKER,
        f"# Activation oracle for `{base}`",
        "",
        f"A LoRA adapter that turns `{base}` into an *activation oracle*: residual-stream activations captured from "
        f"`{base}` are added at the ` ?` placeholders of its prompt (after block {oracle_config.injection_layer}), "
        "and it answers questions about them in words.",
        "",
        "## Load it",
        "",
        "```python",
        "import activation_oracles as ao",
        f"oracle = ao.load_oracle({folder!r})",
        f"target = oracle.model  # the base model, adapter off outside oracle calls; or ao.load_model({base!r})",
        'acts = ao.capture(target, "Tell me about owls.", layer_percent=50)',
        'oracle.ask(acts, "What is the text about?")',
        'oracle.choose(acts, "Is the text about an animal?", ["Yes", "No"])',
        "```",
        "",
        "```",
        f"ao ask --oracle {shlex.quote(folder)} --prompt 'Tell me about owls.' --question 'What is the text about?'",
        "```",
        "",
        "## Recipe",
        "",
        *_recipe(cfg, oracle_config, training.get("steps", "?")),
        "",
        f"The full resolved config is `config.toml` (`ao train --config {shlex.quote(folder + '/config.toml')} "
        "--out NEW_DIR` "
        "trains it again).",
        "",
        "## Data",
        "",
        *_data(cfg, training),
        "",
        "## Run",
        "",
        f"- {training.get('steps', '?')} steps, {training.get('examples', '?')} examples, "
        f"{training.get('world_size', 1)} process{'es' if training.get('world_size', 1) != 1 else ''}",
        f"- wall time {_duration(wall)} (training steps {_duration(train_s)}, {tok_s:.0f} oracle tokens/s)",
        f"- final training loss {final_loss:.4f} per answer token" if isinstance(final_loss, (int, float))
        else "- no training step logged",
        f"- last logged window: loss {train[-1]['loss']:.4f} at step {train[-1]['step']}" if train else
        "- metrics.jsonl holds no training lines",
        f"- written {date.today().isoformat()} by activation_oracles {__version__}",
        "",
        "## Final evaluation",
        "",
        *_evaluation(ev),
        "",
        "## Files",
        "",
        "- `adapter_model.safetensors`, `adapter_config.json`: the LoRA weights (PEFT format)",
        "- `oracle_config.json`: how activations enter the oracle (layers, placeholder, injection, centring) and "
        "this run's training record",
        "- `config.toml`: the resolved training config; `metrics.jsonl`: loss, learning rate and evaluations per "
        "logged step; `checkpoints/`: resumable state (`ao train --resume`)",
    ]
    return "\n".join(lines) + "\n"
