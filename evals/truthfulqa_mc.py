"""TruthfulQA MC1/MC2 of the base model and every organism: does a fine-tune cost truthfulness?

Every model scores the same seeded sample of questions (:func:`mc_scores`, by answer
log-likelihood); each organism is attached to the one base model as a LoRA adapter,
so the base rows and the organism rows differ only by the adapter. Beside each
organism's MC1/MC2 (Wilson / bootstrap 95% intervals) stands its paired difference from
the base on the same questions, with a paired percentile-bootstrap 95% interval (the
question sample is resampled, both models together), so a regression is visible as an
interval below zero.

>>> from activation_oracles.evals.truthfulqa_mc import paired_difference
>>> d = paired_difference([0.6, 0.7, 0.9], [0.5, 0.5, 0.5])    # better on every question
>>> round(d["diff"], 4), d["ci_low"] > 0
(0.2333, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from activation_oracles.errors import ConfigError, DataError
from activation_oracles.files import atomic_write_bytes

from .interval_plot import plot_results
from .report import prepare_out_dir, write_results
from .truthfulqa import TQAQuestion, load_truthfulqa, mc_scores, percentile, summarise


def paired_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 1000, seed: int = 0
                      ) -> dict[str, float]:
    """Mean of ``a - b`` over paired items, with a percentile-bootstrap 95% interval (deterministic)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists; got {len(a)} and {len(b)}.")
    diffs = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(n_boot))
    return {"diff": sum(diffs) / n, "ci_low": percentile(means, 0.025), "ci_high": percentile(means, 0.975)}


PARTIAL_DIR = "partial"  # per-model checkpoints of a run in progress, inside its output folder


def _questions_sha256(questions: Sequence[TQAQuestion]) -> str:
    text = json.dumps([[q.question, q.best, list(q.correct), list(q.incorrect)] for q in questions])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _checkpoint_path(folder: Path, key: dict[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key['model'])}-{digest}.json"


def _read_checkpoint(folder: Path, key: dict[str, str], questions: Sequence[TQAQuestion]
                     ) -> tuple[list[dict[str, Any]], float] | None:
    """A model's saved scores and scoring seconds, when its checkpoint matches ``key`` and ``questions``.

    Anything else (no file, another key, a damaged or truncated file, a row that does not fit its
    question) gives None: the model is scored again and the file replaced, never half-trusted.
    """
    try:
        data = json.loads(_checkpoint_path(folder, key).read_text(encoding="utf-8"))
        if data["key"] != key or len(data["rows"]) != len(questions):
            return None
        scores = []
        for q, (mc1, mc2, ll_c, ll_i) in zip(questions, data["rows"]):
            if len(ll_c) != len(q.correct) or len(ll_i) != len(q.incorrect):
                return None
            correct = {a: float(x) for a, x in zip(q.correct, ll_c)}
            scores.append({"question": q.question, "category": q.category, "mc1": float(mc1), "mc2": float(mc2),
                           "logprobs": {"best": correct[q.best], "correct": correct,
                                        "incorrect": {a: float(x) for a, x in zip(q.incorrect, ll_i)}}})
        return scores, float(data["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_checkpoint(folder: Path, key: dict[str, str], scores: list[dict[str, Any]], seconds: float) -> None:
    """Numbers only (the answers' texts come from the questions): about 100 kB a model at 817 questions."""
    rows = [[s["mc1"], s["mc2"], list(s["logprobs"]["correct"].values()), list(s["logprobs"]["incorrect"].values())]
            for s in scores]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(_checkpoint_path(folder, key),
                       json.dumps({"key": key, "seconds": seconds, "rows": rows}).encode("utf-8"))


def run_truthfulqa_mc(organisms: Sequence[Any], *, base: Any = "smollm2-135m",
                      data_dir: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None,
                      limit: int | None = 100, seed: int = 0, overwrite: bool = False, batch_size: int = 16,
                      n_boot: int = 1000, progress: bool = False) -> dict[str, Any]:
    """MC1/MC2 of ``base`` and of each organism (folders or loaded organisms) on the same questions.

    Args:
        organisms: organism folders (``ao organism build``) or loaded organisms on ``base``.
        base: the base model (spec or loaded); every organism must be built on it.
        data_dir: the shared data folder (``truthfulqa/TruthfulQA.csv``; default ``$AO_DATA_DIR``).
        limit: questions, a seeded sample (``None``: all 817).
        progress: bars with an ETA (per model, over its answers) on stderr when it is a terminal.

    With ``out``, every model's scores are checkpointed in ``out/partial/`` as soon as they are done:
    the same call after a kill scores only the models it had not finished (``extra.resumed_models``;
    ``extra.scoring_s`` keeps each model's scoring time, reused ones included).
    """
    from activation_oracles.progress import progress as progress_bar

    from .organism import attach_organism, load_base

    if limit is not None and limit < 2:
        raise ConfigError(f"limit={limit}; TruthfulQA MC needs at least 2 questions (or None for all).")
    data_dir = data_dir or os.environ.get("AO_DATA_DIR")
    if not data_dir:
        raise DataError("TruthfulQA MC needs the shared data folder (truthfulqa/TruthfulQA.csv); pass --data-dir "
                        "or set $AO_DATA_DIR.")
    out_path = prepare_out_dir(out, task="truthfulqa-mc", overwrite=overwrite) if out is not None else None
    t0 = time.perf_counter()
    model = load_base(base)
    base_name = base if isinstance(base, str) else model.name
    loaded = [attach_organism(spec, model, base_name=base_name, what="the base model") for spec in organisms]
    questions = load_truthfulqa(Path(data_dir) / "truthfulqa" / "TruthfulQA.csv")
    if limit is not None and limit < len(questions):
        questions = random.Random(seed).sample(questions, limit)
    show = True if progress else None  # False: the inner bars follow the ambient default
    # A killed run keeps every model it finished: each model's scores go to a checkpoint beside the
    # results (keyed by the questions, the base and the adapter's hash), read back on the next run and
    # removed once results.json is written. A 15-model run at all 817 questions is hours on a CPU.
    partial = out_path / PARTIAL_DIR if out_path is not None else None
    qkey = _questions_sha256(questions)
    models: list[tuple[str, Any, str | None, str]] = [("base", model, None, "")]
    models += [(o.name, o.model, o.adapter, str(o.card.get("adapter_sha256", ""))) for o in loaded]
    per_model: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}  # each model's scoring time, from its checkpoint when it was reused
    resumed: list[str] = []
    with progress_bar(desc="truthfulqa-mc models", total=len(models), unit="model", enabled=progress,
                      leave=None) as bar:
        for name, m, adapter, adapter_sha in models:
            key = {"base": base_name, "questions_sha256": qkey, "model": name, "adapter_sha256": adapter_sha}
            saved = _read_checkpoint(partial, key, questions) if partial is not None else None
            if saved is None:
                t_model = time.perf_counter()
                scores = mc_scores(m, questions, batch_size=batch_size, adapter=adapter, progress=show)
                seconds[name] = round(time.perf_counter() - t_model, 1)
                if partial is not None:
                    _write_checkpoint(partial, key, scores, seconds[name])
            else:
                scores, seconds[name] = saved
                resumed.append(name)
            per_model[name] = scores
            bar.update(1)
    rows = []
    for name, scores in per_model.items():
        row: dict[str, Any] = {"model": name, **summarise(scores, n_boot=n_boot, seed=seed)}
        if name != "base":
            for k in ("mc1", "mc2"):
                row[f"{k}_vs_base"] = paired_difference([s[k] for s in scores], [s[k] for s in per_model["base"]],
                                                        n_boot=n_boot, seed=seed)
        rows.append(row)
    results = {"task": "truthfulqa-mc",
               "config": {"base": base_name, "questions": len(questions), "limit": limit, "seed": seed,
                          "organisms": [o.name for o in loaded],
                          "recipe_hashes": [str(o.card.get("recipe_hash", ""))[:12] for o in loaded],
                          "n_boot": n_boot},
               "rows": rows, "per_question": {k: [{"mc1": s["mc1"], "mc2": s["mc2"]} for s in v]
                                              for k, v in per_model.items()},
               "extra": {"wall_s": round(time.perf_counter() - t0, 1),  # this run only
                         "scoring_s": seconds, "scoring_s_total": round(sum(seconds.values()), 1),
                         "resumed_models": resumed}}
    if out_path is not None:
        write_results(out_path, results, truthfulqa_mc_markdown(results))
        plot_results(out_path)
        shutil.rmtree(out_path / PARTIAL_DIR, ignore_errors=True)
    return results


def truthfulqa_mc_markdown(results: dict[str, Any]) -> str:
    """The MC table: per model MC1 and MC2 with 95% intervals, and the paired difference from the base."""
    c = results["config"]
    lines = ["# TruthfulQA MC1 / MC2 per model", "",
             f"{c['questions']} questions (seed {c['seed']}), scored by answer log-likelihood; MC1 with a Wilson "
             "95% interval, MC2 with a bootstrap one; vs base: paired difference on the same questions, "
             "paired bootstrap 95% interval (below zero = less truthful than the base).", "",
             "| model | MC1 | MC2 | MC1 vs base | MC2 vs base |", "|---|---|---|---|---|"]

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    for r in results["rows"]:
        cells = [f"{pct(r['mc1'])} [{pct(r['mc1_ci'][0])}, {pct(r['mc1_ci'][1])}]",
                 f"{pct(r['mc2'])} [{pct(r['mc2_ci'][0])}, {pct(r['mc2_ci'][1])}]"]
        for k in ("mc1", "mc2"):
            d = r.get(f"{k}_vs_base")
            cells.append("" if d is None else f"{100 * d['diff']:+.1f} [{100 * d['ci_low']:+.1f}, "
                                                f"{100 * d['ci_high']:+.1f}]")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines += ["", "![MC1 and MC2 per model](plot_mc.png)"]
    return "\n".join(lines) + "\n"


__all__ = ["paired_difference", "run_truthfulqa_mc", "truthfulqa_mc_markdown"]
