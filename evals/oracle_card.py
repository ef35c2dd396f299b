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
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

from .stats import accuracy_row

METHODS = ("trained", "untrained", "shuffled", "coeff0")
EVALS = ("classification_test", "classification_held_out", "system_prompt_qa", "context_next", "context_previous",
         "describe")
DESCRIBE_POSITIONS = 16
DESCRIBE_MAX_NEW_TOKENS = 24
_STOP_WORDS = frozenset("""this that with from have will would there their they them then than what when where which
while about into your yours some such only also just more most very been being were does doesn't don't cannot can't
isn't it's these those other others because should could every many much make makes made like over under after
before each both here how who whom whose why all any not nor our out own same too can did has had its the and for
are but was you one two""".split())
YES_NO = ("Yes", "No")
EVAL_LAYER_PERCENT = 50.0
CONTEXT_COLUMN = "Incorrect Answers"  # TruthfulQA text the smollm2-135m mixture never trains on
MAX_CONTEXT_TOKENS = 128


@dataclass
class EvalSet:
    """The examples of one evaluation and how they are scored."""

    name: str
    kind: str  # "choose" (argmax over choices), "exact" (greedy ask, normalised exact match) or "describe"
    chance: float
    examples: list[Any]  # TrainingExample
    choices: list[tuple[str, ...]] = field(default_factory=list)  # per example, for "choose"
    groups: list[str] = field(default_factory=list)  # per example subgroup (e.g. the task), optional


# -- building the examples -----------------------------------------------------------------------------

def _take(stream: Iterator[Any], n: int, max_draws: int | None = None) -> list[Any]:
    """The first ``n`` distinct examples (context, positions, question) of a stream."""
    seen: set[tuple[Any, ...]] = set()
    out: list[Any] = []
    max_draws = max_draws if max_draws is not None else 50 * n + 100
    for draws, ex in enumerate(stream):
        key = (ex.context_ids, ex.positions, ex.question)
        if key not in seen:
            seen.add(key)
            out.append(ex)
        if len(out) >= n or draws + 1 >= max_draws:
            break
    return out


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z']+", text.lower()))


def _similarity(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def spqa_distractors(qa: dict[str, list[tuple[str, str]]], label: str, question: str, answer: str, rng: Random,
                     k: int = 3) -> list[str]:
    """``k`` answers that other labels give to the questions most similar to ``question``.

    Each other label offers its answer to its own most similar question (word-set Jaccard);
    the labels whose question is closest win (an identical question first), ties broken by a
    shuffle from ``rng``, so the result is deterministic given ``rng``. Answers equal to the true
    one (after strip + lowercase) or to each other are skipped.
    """
    q = _words(question)
    others = sorted(lb for lb in qa if lb != label)
    rng.shuffle(others)
    offers = []
    for rank, other in enumerate(others):
        sim, answer_other = max(((_similarity(q, _words(pq)), pa) for pq, pa in qa[other]), key=lambda t: t[0])
        offers.append((-sim, rank, answer_other))
    out: list[str] = []
    taken = {_norm(answer)}
    for _, _, candidate in sorted(offers):
        if _norm(candidate) not in taken:
            out.append(candidate)
            taken.add(_norm(candidate))
        if len(out) == k:
            break
    return out


def _latentqa_paths(data_dir: Path) -> tuple[Path, list[Path]]:
    """qa.json and the dialogue files, from the folder that holds qa.json (as the training preset does)."""
    lqa = data_dir / "latentqa"
    qa_dir = lqa / "train" if (lqa / "train" / "qa.json").exists() else lqa / "eval"
    return qa_dir / "qa.json", [qa_dir / n for n in ("system.json", "stimulus.json") if (qa_dir / n).exists()]


def build_eval_sets(tokenizer: Any, data_dir: str | os.PathLike[str], *, n_per_eval: int = 100, seed: int = 0,
                    evals: Sequence[str] = EVALS, layer_percent: float = EVAL_LAYER_PERCENT,
                    context_column: str = CONTEXT_COLUMN) -> list[EvalSet]:
    """The examples of each evaluation in ``evals``, deterministic given ``seed``.

    ``data_dir`` holds ``classification/``, ``latentqa/`` and ``truthfulqa/`` (``shared/data``).
    """
    from activation_oracles.errors import ConfigError
    from activation_oracles.training.classification import DEFAULT_TASKS, Classification
    from activation_oracles.training.context_prediction import ContextPrediction
    from activation_oracles.training.sources import CsvColumnSource
    from activation_oracles.training.system_prompt_qa import SystemPromptQA

    unknown = sorted(set(evals) - set(EVALS))
    if unknown:
        raise ConfigError(f"unknown evaluations {unknown}; expected a subset of {list(EVALS)}.")
    root = Path(data_dir).expanduser()
    cls_dir = root / "classification"
    lp = (layer_percent,)
    common = {"layer_percents": lp, "max_context_tokens": MAX_CONTEXT_TOKENS}
    sets: list[EvalSet] = []
    for name in evals:
        rng = Random(f"{seed}:{name}")
        if name == "classification_test":
            ex = _take(Classification(cls_dir, split="test", **common).examples(tokenizer, rng), n_per_eval)
            sets.append(EvalSet(name, "choose", 0.5, ex, [YES_NO] * len(ex), [e.meta["task"] for e in ex]))
        elif name == "classification_held_out":
            ex = []
            for task in sorted(t.name for t in DEFAULT_TASKS.values() if t.held_out):
                b = Classification(cls_dir, tasks=[task], split="held_out", **common)
                ex += _take(b.examples(tokenizer, Random(f"{seed}:{name}:{task}")), n_per_eval)
            sets.append(EvalSet(name, "choose", 0.5, ex, [YES_NO] * len(ex), [e.meta["task"] for e in ex]))
        elif name == "system_prompt_qa":
            qa_path, dialogues = _latentqa_paths(root)
            b = SystemPromptQA(qa_path, dialogues, split="test", **common)
            ex = _take(b.examples(tokenizer, rng), n_per_eval)
            choices = []
            for e in ex:
                d_rng = Random(f"{seed}:{name}:distractors:{e.meta['label']}:{e.meta['qa_index']}")
                options = [e.answer] + spqa_distractors(b.qa, e.meta["label"], e.question, e.answer, d_rng)
                d_rng.shuffle(options)
                choices.append(tuple(options))
            sets.append(EvalSet(name, "choose", 1 / max(len(choices[0]) if choices else 4, 1), ex, choices))
        elif name == "describe":
            ex = _describe_examples(tokenizer, root / "truthfulqa" / "TruthfulQA.csv", context_column, n_per_eval,
                                    rng, layer_percent)
            sets.append(EvalSet(name, "describe", 0.0, ex))
        else:
            direction = name.removeprefix("context_")
            source = CsvColumnSource(root / "truthfulqa" / "TruthfulQA.csv", context_column, name="truthfulqa_eval")
            b = ContextPrediction(source, name=name, n_positions=(1, 1), n_tokens=(1, 1), directions=(direction,),
                                  shuffle_buffer=256, **common)
            ex = _take(b.examples(tokenizer, rng), n_per_eval)
            sets.append(EvalSet(name, "exact", 0.0, ex))
    return sets


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words of >= 4 letters that are not stop words (what a description should name)."""
    return frozenset(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in _STOP_WORDS)


def describe_hit(description: str, text: str) -> bool:
    """Whether ``description`` names a content word of ``text`` that the describe question does not contain."""
    from activation_oracles.oracle import DESCRIBE_QUESTION

    return bool((content_words(text) - content_words(DESCRIBE_QUESTION)) & content_words(description))


def _describe_examples(tokenizer: Any, csv_path: Path, column: str, n: int, rng: Random, layer_percent: float
                       ) -> list[Any]:
    """``n`` TruthfulQA texts (one of the column's answers each), read at their last <= 16 tokens."""
    import csv

    from activation_oracles.oracle import DESCRIBE_QUESTION
    from activation_oracles.training.classification import encode_with_span
    from activation_oracles.training.example import TrainingExample

    with csv_path.open(newline="", encoding="utf-8") as f:
        texts = sorted({t.strip() for r in csv.DictReader(f) for t in (r.get(column) or "").split(";")
                        if len(content_words(t)) >= 2})
    rng.shuffle(texts)
    out = []
    for text in texts[:n]:
        ids, (start, stop) = encode_with_span(tokenizer, text)
        positions = tuple(range(max(start, stop - DESCRIBE_POSITIONS), stop))
        out.append(TrainingExample(ids, positions, layer_percent, DESCRIBE_QUESTION, text, "describe",
                                   meta={"text": text}))
    return out


# -- activations ---------------------------------------------------------------------------------------

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
    return text.strip().lower()


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
