"""The oracle card's evaluations: accuracy with 95% Wilson intervals, beside three controls.

Every evaluation is a list of examples built deterministically (by ``seed``) with the
project's own dataset builders, read at 50% depth (the evaluation default):

* ``classification_test``: held-out rows of the training classification tasks
  (``Classification(split="test")``), scored by ``oracle.choose(acts, q, ["Yes", "No"])``.
* ``classification_held_out``: tasks never trained on (``split="held_out"``: negated Geometry
  of Truth, common claims, singular/plural, headlines), ``n_per_eval`` examples per task,
  pooled and also reported per task (``classification_held_out/<task>``).
* ``system_prompt_qa``: held-out LatentQA labels (``SystemPromptQA(split="test")``), scored by
  ``choose`` between the true answer and 3 distractors: other labels' answers to the questions
  most similar to the asked one (word overlap; usually the very same question), in a seeded
  random order. Chance 25%.
* ``context_next`` / ``context_previous``: J = K = 1 context prediction on a TruthfulQA column
  the training mixture does not read, greedy ``ask``, exact match after strip + lowercase.

* ``describe``: ``oracle.describe`` (the reference's open question "Can you describe what is
  happening in this text?") on the last <= 16 tokens of a TruthfulQA text of the same column;
  a description counts when it names a content word of that text (a word of >= 4 letters,
  not a stop word, not in the question). There is no chance level: the controls are the yardstick.

Each figure is measured for four *methods* on the very same examples:

* ``trained``: the oracle under evaluation;
* ``untrained``: ``oracle.as_untrained()`` (no adapter, same injection and centring);
* ``shuffled``: the trained oracle given another example's activations (a seeded derangement
  within the evaluation, so every example reads a different context);
* ``coeff0``: the trained oracle with ``coeff=0`` (placeholders present, no activation added).

Run it on a trained oracle directory::

    python -m activation_oracles.evals.oracle_card --oracle runs/smollm2-135m/final \\
        --data-dir ../shared/data --out results.json --n 100 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from random import Random
from typing import Any

from .card_sets import (CONTEXT_COLUMN, DESCRIBE_MAX_NEW_TOKENS, DESCRIBE_POSITIONS, EVAL_LAYER_PERCENT, EVALS,
                        MAX_CONTEXT_TOKENS, YES_NO, EvalSet, build_eval_sets, content_words, describe_hit,
                        normalise_answer, spqa_distractors)
from .stats import accuracy_row

METHODS = ("trained", "untrained", "shuffled", "coeff0")
# (EvalSet, build_eval_sets, describe_hit, ... live in card_sets.py and are re-exported here.)
__all__ = ["CONTEXT_COLUMN", "DESCRIBE_MAX_NEW_TOKENS", "DESCRIBE_POSITIONS", "EVAL_LAYER_PERCENT", "EVALS",
           "MAX_CONTEXT_TOKENS", "METHODS", "YES_NO", "EvalSet", "build_eval_sets", "capture_examples",
           "content_words", "derangement", "describe_hit", "evaluate_oracle", "main", "render_markdown",
           "render_task_table", "score", "spqa_distractors"]



def capture_examples(target: Any, examples: Sequence[Any], *, batch_size: int = 16) -> list[Any]:
    """``Activations`` of each example: the target's residuals at its layer and positions (adapters off)."""
    import torch

    from activation_oracles.activations import Activations
    from activation_oracles.adapters import use_adapter
    from activation_oracles.hooks import capture_residuals
    from activation_oracles.models import as_model

    m = as_model(target)
    tok = m.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[Any] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: (m.layer_at(examples[i].layer_percent),
                                                         len(examples[i].context_ids)))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        layers = sorted({m.layer_at(examples[i].layer_percent) for i in chunk})
        width = max(len(examples[i].context_ids) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # left padding
            ctx = examples[i].context_ids
            ids[row, width - len(ctx):] = torch.tensor(ctx, dtype=torch.long)
            mask[row, width - len(ctx):] = 1
        with torch.no_grad(), use_adapter(m.hf, None), capture_residuals(m, layers, stop_early=True) as cache:
            m.hf(input_ids=ids.to(m.device), attention_mask=mask.to(m.device))
        for row, i in enumerate(chunk):
            ex = examples[i]
            layer = m.layer_at(ex.layer_percent)
            offset = width - len(ex.context_ids)
            index = torch.tensor([offset + p for p in ex.positions])
            out[i] = Activations(vectors={layer: cache[layer][row, index].float().cpu()}, positions=tuple(ex.positions),
                                 token_ids=tuple(ex.context_ids),
                                 tokens=tuple(tok.convert_ids_to_tokens(list(ex.context_ids))),
                                 model_name=m.name, n_layers=m.n_layers, d_model=m.d_model)
    return out


def derangement(n: int, rng: Random) -> list[int]:
    """``donor[i] != i`` for every i (when n >= 2): a random cycle through a shuffled order."""
    order = list(range(n))
    rng.shuffle(order)
    donor = list(range(n))
    for k in range(n):
        donor[order[k]] = order[(k + 1) % n]
    return donor


# -- scoring -------------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return normalise_answer(text)


def score(oracle: Any, es: EvalSet, acts: Sequence[Any], *, batch_size: int = 16,
          max_new_tokens: int = 8, bar: Any = None) -> list[dict[str, Any]]:
    """Per example ``{prediction, correct}`` for one oracle (method) on one evaluation.

    ``bar`` (a :func:`activation_oracles.progress.progress` bar) advances by one per example.
    """
    tick = bar.update if bar is not None else (lambda _n: None)
    questions = [e.question for e in es.examples]
    if not es.examples:
        return []
    if es.kind == "exact":
        answers: list[str] = []
        for start in range(0, len(acts), batch_size):  # the batches ask() would make, one at a time for the bar
            answers += oracle.ask(list(acts[start:start + batch_size]), questions[start:start + batch_size],
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
            tick(len(questions[start:start + batch_size]))
        return [{"prediction": a, "correct": _norm(a) == _norm(e.answer)} for a, e in zip(answers, es.examples)]
    if es.kind == "describe":
        descriptions: list[str] = []
        for start in range(0, len(acts), batch_size):
            descriptions += oracle.describe(list(acts[start:start + batch_size]),
                                            max_new_tokens=DESCRIBE_MAX_NEW_TOKENS, batch_size=batch_size)
            tick(len(acts[start:start + batch_size]))
        return [{"prediction": d, "correct": describe_hit(d, e.answer)} for d, e in zip(descriptions, es.examples)]
    results: list[dict[str, Any] | None] = [None] * len(es.examples)
    by_choices: dict[tuple[str, ...], list[int]] = {}
    for i, c in enumerate(es.choices):
        by_choices.setdefault(tuple(c), []).append(i)
    for choices, group in by_choices.items():
        for start in range(0, len(group), batch_size):
            idx = group[start:start + batch_size]
            probs = oracle.choose([acts[i] for i in idx], [questions[i] for i in idx], list(choices),
                                  batch_size=2 * batch_size)
            for i, p in zip(idx, probs):
                pred = max(choices, key=lambda c: p[c])  # ties: the first choice in the (seeded) order
                results[i] = {"prediction": pred, "correct": pred == es.examples[i].answer,
                              "p_answer": p[es.examples[i].answer]}
            tick(len(idx))
    return results  # type: ignore[return-value]


def _row(eval_name: str, method: str, correct: Sequence[bool], chance: float) -> dict[str, Any]:
    return {"eval": eval_name, "method": method, **accuracy_row(sum(map(bool, correct)), len(correct)),
            "chance": chance}


def evaluate_oracle(oracle: Any, target: Any, *, data_dir: str | os.PathLike[str], n_per_eval: int = 100,
                    seed: int = 0, evals: Sequence[str] = EVALS, batch_size: int = 16, max_new_tokens: int = 8,
                    context_column: str = CONTEXT_COLUMN, details: bool = False,
                    log: Callable[[str], None] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Every evaluation for the trained oracle and its three controls.

    Args:
        oracle: the trained ``ActivationOracle`` (load it with ``ao.load_oracle(dir, base=target)``).
        target: the model whose activations are read (``ao.load_model(...)``).
        data_dir: folder with ``classification/``, ``latentqa/`` and ``truthfulqa/``.
        n_per_eval: examples per evaluation (per task for ``classification_held_out``).
        seed: fixes the examples, the distractors and the shuffled pairing.
        evals: which evaluations to run (default: all of ``EVALS``).
        details: also return each example's prediction per method (under ``"details"``).
        log: called with progress lines (e.g. ``print``).
        progress: a bar with an ETA per evaluation, over its examples x methods, on stderr when it is a
            terminal (``None``: the ambient default of :mod:`activation_oracles.progress`, off in the library).

    Returns:
        ``{"meta": {...}, "rows": [{eval, method, correct, n, accuracy, ci_low, ci_high, chance}, ...]}``.
    """
    from activation_oracles.models import as_model
    from activation_oracles.progress import progress as progress_bar

    say = log or (lambda _msg: None)
    target_m = as_model(target)
    t0 = time.perf_counter()
    sets = build_eval_sets(target_m.tokenizer, data_dir, n_per_eval=n_per_eval, seed=seed, evals=evals,
                           context_column=context_column)
    methods = {"trained": oracle, "untrained": oracle.as_untrained(),
               "shuffled": oracle, "coeff0": oracle.with_config(coeff=0.0)}
    rows: list[dict[str, Any]] = []
    detail: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for es in sets:
        t_eval = time.perf_counter()
        say(f"[oracle_card] {es.name}: {len(es.examples)} examples")
        acts = capture_examples(target_m, es.examples, batch_size=batch_size)
        donor = derangement(len(acts), Random(f"{seed}:shuffle:{es.name}"))
        per_method: dict[str, list[dict[str, Any]]] = {}
        bar = progress_bar(desc=es.name, total=len(methods) * len(es.examples), unit="ex", enabled=progress)
        for method, orc in methods.items():
            bar.set_postfix_str(method)
            use = [acts[donor[i]] for i in range(len(acts))] if method == "shuffled" else acts
            per_method[method] = score(orc, es, use, batch_size=batch_size, max_new_tokens=max_new_tokens, bar=bar)
            correct = [r["correct"] for r in per_method[method]]
            rows.append(_row(es.name, method, correct, es.chance))
            say(f"[oracle_card]   {method}: {rows[-1]['correct']}/{rows[-1]['n']}")
        bar.close()
        for group in sorted(set(es.groups)) if es.name.startswith("classification") else []:
            idx = [i for i, g in enumerate(es.groups) if g == group]
            for method in methods:
                rows.append(_row(f"{es.name}/{group}", method, [per_method[method][i]["correct"] for i in idx],
                                 es.chance))
        if details:
            detail[es.name] = [{"question": e.question, "answer": e.answer, "source": e.source,
                                "choices": list(es.choices[i]) if es.choices else None,
                                "shuffled_from": donor[i],
                                **{m: per_method[m][i] for m in methods}} for i, e in enumerate(es.examples)]
        seconds[es.name] = round(time.perf_counter() - t_eval, 2)
    meta = {"seed": seed, "n_per_eval": n_per_eval, "evals": list(evals), "methods": list(METHODS),
            "layer_percent": EVAL_LAYER_PERCENT, "context_column": context_column,
            "target": target_m.name, "oracle": repr(oracle), "seconds": seconds,
            "total_seconds": round(time.perf_counter() - t0, 2)}
    out: dict[str, Any] = {"meta": meta, "rows": rows}
    if details:
        out["details"] = detail
    return out


# -- reporting -----------------------------------------------------------------------------------------

def _grid(rows: Sequence[dict[str, Any]]) -> tuple[list[str], dict[tuple[str, str], dict[str, Any]], list[str]]:
    """Evaluations in first-seen order, rows by (evaluation, method), and the methods present (card order)."""
    evals: list[str] = []
    cell: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["eval"] not in evals:
            evals.append(r["eval"])
        cell[(r["eval"], r["method"])] = r
    return evals, cell, [m for m in METHODS if any(k[1] == m for k in cell)]


def render_markdown(results: dict[str, Any], *, digits: int = 1) -> str:
    """A markdown table: one line per evaluation, ``acc [lo, hi]`` (percent) per method."""
    rows = results["rows"] if isinstance(results, dict) else results
    evals, cell, methods = _grid(rows)
    pct = lambda x: f"{100 * x:.{digits}f}"  # noqa: E731
    lines = ["| evaluation | n | chance | " + " | ".join(methods) + " |",
             "|---|---:|---:|" + "---:|" * len(methods)]
    for ev in evals:
        first = next(cell[(ev, m)] for m in methods if (ev, m) in cell)
        cells = []
        for m in methods:
            r = cell.get((ev, m))
            cells.append(f"{pct(r['accuracy'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}]" if r else "")
        lines.append(f"| {ev} | {first['n']} | {pct(first['chance'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_task_table(results: dict[str, Any], ceilings: dict[str, float], *, digits: int = 1) -> str:
    """Per classification task: its linear-probe ceiling beside each method's accuracy (percent).

    ``ceilings`` maps a task name to the probe's held-out accuracy (``ao data probe --out``;
    :func:`activation_oracles.training.presets.probe_ceilings` reads the shipped table).

    >>> rows = [{"eval": "classification_test/tense", "method": m, "accuracy": a, "n": 40}
    ...         for m, a in (("trained", 0.8), ("shuffled", 0.5))]
    >>> print(render_task_table({"rows": rows}, {"tense": 0.944}), end="")
    | split | task | n | probe ceiling | trained | shuffled |
    |---|---|---:|---:|---:|---:|
    | classification_test | tense | 40 | 94.4 | 80.0 | 50.0 |
    """
    tasks, cell, methods = _grid([r for r in results["rows"]
                                  if r["eval"].startswith("classification") and "/" in r["eval"]])
    pct = lambda x: f"{100 * x:.{digits}f}"  # noqa: E731
    lines = ["| split | task | n | probe ceiling | " + " | ".join(methods) + " |",
             "|---|---|---:|---:|" + "---:|" * len(methods)]
    for ev in tasks:
        split, task = ev.split("/", 1)
        first = next(cell[(ev, m)] for m in methods if (ev, m) in cell)
        ceiling = pct(ceilings[task]) if task in ceilings else "-"
        cells = [pct(cell[(ev, m)]["accuracy"]) if (ev, m) in cell else "" for m in methods]
        lines.append(f"| {split} | {task} | {first['n']} | {ceiling} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _default_data_dir() -> str | None:
    env = os.environ.get("AO_DATA_DIR")
    if env:
        return env
    from activation_oracles.training.classification import find_shared_data

    found = find_shared_data()
    return str(found) if found is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m activation_oracles.evals.oracle_card",
                                description="Oracle card evaluations with 95%% Wilson intervals and controls.")
    p.add_argument("--oracle", required=True, help="oracle directory (oracle_config.json + adapter) or a shipped name")
    p.add_argument("--target", default="smollm2-135m", help="target model: embedded name, HF id or local dir")
    p.add_argument("--data-dir", default=None, help="folder with classification/, latentqa/, truthfulqa/ "
                   "(default: $AO_DATA_DIR or ../shared/data)")
    p.add_argument("--out", required=True, help="results JSON path")
    p.add_argument("--markdown", default=None, help="also write the markdown table here")
    p.add_argument("--n", type=int, default=100, help="examples per evaluation (per task for held-out tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evals", default=",".join(EVALS), help=f"comma-separated subset of {','.join(EVALS)}")
    p.add_argument("--device", default=None, help="where the target and oracle run, e.g. cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--details", action="store_true", help="include per-example predictions in the JSON")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the libraries' own warnings and progress bars (hidden by default)")
    args = p.parse_args(argv)
    data_dir = args.data_dir or _default_data_dir()
    if data_dir is None:
        p.error("no data dir: pass --data-dir or set AO_DATA_DIR")

    import activation_oracles as ao
    from activation_oracles.verbosity import library_verbosity

    with library_verbosity(args.verbose):
        target = ao.load_model(args.target, device=args.device)
        oracle = ao.load_oracle(args.oracle, base=target)
        results = evaluate_oracle(oracle, target, data_dir=data_dir, n_per_eval=args.n, seed=args.seed,
                                  evals=[e for e in args.evals.split(",") if e], batch_size=args.batch_size,
                                  max_new_tokens=args.max_new_tokens, details=args.details,
                                  log=lambda s: print(s, file=sys.stderr, flush=True), progress=True)
    results["meta"]["oracle_dir"] = args.oracle
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    table = render_markdown(results)
    if any(r["eval"].startswith("classification") and "/" in r["eval"] for r in results["rows"]):
        from activation_oracles.training.presets import probe_ceilings

        table += "\n" + render_task_table(results, probe_ceilings())
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
