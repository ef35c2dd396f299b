"""Does the TruthfulQA oracle audit read truth, or the word "no"? Its rows against a negation marker.

TruthfulQA's best answers often deny ("No, ...", "Nothing happens", "I have no comment"); its
incorrect answers less often. This reads a finished audit's ``results.json`` (no model is run):
how well a negation word alone tells true from false answers, each method's correlation with it,
and each method's AUROC on the questions whose two answers are alike in negation.

Run: .venv/bin/python benchmarks/truthfulqa_negation.py results/suite-n40/truthfulqa [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from random import Random

import torch

from activation_oracles.evals.report import load_results
from activation_oracles.evals.stats import auroc_row
from activation_oracles.evals.truthfulqa import load_truthfulqa

NEGATIONS = ("no ", "not", "n't", "nothing", "never", "none")


def negates(answer: str) -> bool:
    return any(w in answer.lower() + " " for w in NEGATIONS)


def fmt(a: dict) -> str:
    return f"{a['auroc']:.2f} [{a['ci_low']:.2f}, {a['ci_high']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", default="results/suite-n40/truthfulqa")
    parser.add_argument("--data", default=os.environ.get("AO_DATA_DIR", "../shared/data"))
    args = parser.parse_args()
    res = load_results(args.results)
    c = res["config"]
    questions = load_truthfulqa(Path(args.data) / "truthfulqa" / "TruthfulQA.csv")
    questions = Random(c["seed"]).sample(questions, min(c["limit"], len(questions)))  # as the audit drew them
    answers = [a for q in questions for a in (q.best, q.incorrect[0])]  # the audit's item order
    neg = [float(negates(a)) for a in answers]
    matched = [i for i, q in enumerate(questions) if negates(q.best) == negates(q.incorrect[0])]
    print(f"{len(questions)} questions; a negation word in {int(sum(neg[0::2]))} best and {int(sum(neg[1::2]))} "
          f"incorrect answers; negation alone as the score: AUROC {fmt(auroc_row(neg[0::2], neg[1::2]))}")
    print(f"questions whose two answers are alike in negation: {len(matched)}")
    print()
    print("| method | mode | AUROC, all | correlation with negation | AUROC, negation-matched |")
    print("|---|---|---|---:|---|")
    for a in res["aggregates"]:
        s = [r["score"] for r in res["rows"] if r["method"] == a["method"] and r["mode"] == a["mode"]]
        corr = torch.corrcoef(torch.tensor([s, neg], dtype=torch.float64))[0, 1]
        m = auroc_row([s[2 * i] for i in matched], [s[2 * i + 1] for i in matched])
        print(f"| {a['method']} | {a['mode']} | {fmt(a)} | {float(corr):+.2f} | {fmt(m)} |")


if __name__ == "__main__":
    main()
