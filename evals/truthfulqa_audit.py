"""TruthfulQA as an oracle audit: can the oracle tell a true answer from a false one by the activations?

For each question, the target reads the question and a candidate answer (the best
answer, and one incorrect answer) as a chat; the oracle is asked "Is this answer
true?" and its P(Yes) is the score. The audit reports the AUROC of that score
separating true from false answers (bootstrap 95% interval), for the oracle on
three input modes and its controls, beside a linear probe trained on Geometry-of-
Truth statements (``classification/gmt``: cities, sp_en_trans, larger_than,
smaller_than, companies) and applied to the same activations, the way a probe
transfers in the truthfulness literature.

>>> from activation_oracles.evals.truthfulqa_audit import QUESTION
>>> QUESTION
'Is this answer true?'
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from random import Random
from typing import Any

import torch

from activation_oracles.errors import ConfigError, DataError

from .audit import MODES, mode_view
from .interval_plot import plot_results
from .report import prepare_out_dir, write_results
from .stats import auroc_row

QUESTION = "Is this answer true?"
GMT_FILES = ("cities", "sp_en_trans", "larger_than", "smaller_than", "companies_true_false")


def _gmt_statements(data_dir: Path, per_file: int, seed: int) -> tuple[list[str], list[int]]:
    import csv

    texts: list[str] = []
    labels: list[int] = []
    rng = Random(seed)
    for name in GMT_FILES:
        path = data_dir / "classification" / "gmt" / f"{name}.csv"
        if not path.is_file():
            raise DataError(f"{str(path)!r} is missing; the TruthfulQA audit's probe trains on the Geometry of Truth "
                            "files in classification/gmt/ of the shared data folder.")
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("statement") and r.get("label") in ("0", "1")]
        rng.shuffle(rows)
        for r in rows[:per_file]:
            texts.append(r["statement"])
            labels.append(int(r["label"]))
    return texts, labels


def run_truthfulqa_audit(*, oracle: Any = "smollm2-135m", data_dir: str | os.PathLike[str] | None = None,
                         out: str | os.PathLike[str] | None = None, limit: int = 50, seed: int = 0,
                         overwrite: bool = False, probe_per_file: int = 200, n_boot: int = 1000,
                         oracle_label: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the audit on ``limit`` questions (a seeded sample); write results.json and report.md to ``out``.

    ``oracle_label`` names the oracle in the results (default: its spec). ``progress``: a bar with an
    ETA over the oracle's forced choices (every answer, input mode and control), on a terminal.
    """
    from activation_oracles.progress import progress as progress_bar

    from activation_oracles.capturing import capture
    from activation_oracles.loading import load_oracle
    from activation_oracles.oracle import ActivationOracle

    from .baselines import fit_probe
    from .chat import running
    from .truthfulqa import load_truthfulqa

    if limit < 2:
        raise ConfigError(f"limit={limit}; the TruthfulQA audit needs at least 2 questions.")
    data_dir = data_dir or os.environ.get("AO_DATA_DIR")
    if not data_dir:
        raise DataError("the TruthfulQA audit needs the shared data folder (truthfulqa/ and classification/gmt/); "
                        "pass --data-dir or set $AO_DATA_DIR.")
    root = Path(data_dir)
    out_path = prepare_out_dir(out, task="truthfulqa", overwrite=overwrite) if out is not None else None
    t0 = time.perf_counter()
    orc = oracle if isinstance(oracle, ActivationOracle) else load_oracle(oracle)
    model = orc.model
    layer = model.layer_at(50)
    questions = load_truthfulqa(root / "truthfulqa" / "TruthfulQA.csv")
    questions = Random(seed).sample(questions, min(limit, len(questions)))
    chats, truth = [], []
    for q in questions:
        for ans, is_true in ((q.best, 1), (q.incorrect[0], 0)):
            chats.append([{"role": "user", "content": q.question}, {"role": "assistant", "content": ans}])
            truth.append(is_true)
    with running(model, None):
        acts = capture(model, chats, layers=[layer], add_generation_prompt=False)
        texts, labels = _gmt_statements(root, probe_per_file, seed)
        gmt = capture(model, texts, layers=[layer], chat=False)
    untrained = orc.as_untrained()
    perm = list(range(len(acts)))
    Random(seed + 1).shuffle(perm)
    aggs, rows = [], []

    def record(method: str, mode: str, scores: list[float]) -> None:
        pos = [s for s, t in zip(scores, truth) if t]
        neg = [s for s, t in zip(scores, truth) if not t]
        aggs.append({"method": method, "mode": mode, **auroc_row(pos, neg, n_boot=n_boot, seed=seed)})
        rows.extend({"method": method, "mode": mode, "item": i, "true": t, "score": s}
                    for i, (s, t) in enumerate(zip(scores, truth)))

    bar = progress_bar(desc="truthfulqa oracle", total=len(MODES) * 4 * len(acts), unit="answer", enabled=progress,
                       leave=None)
    for mode in MODES:
        views = [mode_view(a, mode, -1) for a in acts]
        for method, o, src in (("oracle", orc, views), ("oracle:shuffled", orc, [views[j] for j in perm]),
                               ("oracle:coeff0", orc.with_config(coeff=0.0), views),
                               ("untrained_oracle", untrained, views)):
            yes: list[float] = []
            for start in range(0, len(src), 16):  # 16 at a time, for the bar (choose scores one by one anyway)
                yes += [p["Yes"] for p in o.choose(src[start:start + 16], QUESTION, ["Yes", "No"])]
                bar.update(len(src[start:start + 16]))
            record(method, mode, yes)
        probe = fit_probe(torch.stack([mode_view(g, mode, -1).vectors_for(layer).float().mean(0) for g in gmt]),
                          [str(x) for x in labels])
        x = torch.stack([v.vectors_for(layer).float().mean(0) for v in views])
        logits = probe.logits(x)
        record("probe (GoT)", mode, torch.softmax(logits, -1)[:, probe.classes.index("1")].tolist())
    bar.close()
    label = oracle_label or (str(oracle) if isinstance(oracle, (str, Path)) else "<oracle>")
    results = {"task": "truthfulqa", "config": {"oracle": label, "questions": len(questions), "limit": limit,
                                                "seed": seed, "read_layer": layer, "probe_statements": len(texts),
                                                "question": QUESTION},
               "chance": {"auroc": 0.5}, "rows": rows, "aggregates": aggs, "notes": [],
               "extra": {"wall_s": round(time.perf_counter() - t0, 1)}}
    if out_path is not None:
        write_results(out_path, results, truthfulqa_markdown(results))
        plot_results(out_path)
    return results


def truthfulqa_markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = ["# TruthfulQA oracle audit", "",
             f"{c['questions']} questions x (best answer, one incorrect answer); read layer {c['read_layer']}; "
             f"oracle question {c['question']!r}; probe trained on {c['probe_statements']} Geometry-of-Truth "
             "statements. AUROC of P(true) separating true from false answers, 95% bootstrap interval.", "",
             "| method | mode | AUROC |", "|---|---|---:|"]
    for a in results["aggregates"]:
        lines.append(f"| {a['method']} | {a['mode']} | {a['auroc']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}] |")
    lines += ["", "![AUROC per method and mode](plot_auroc.png)"]
    return "\n".join(lines) + "\n"
