"""Which yes/no and open questions can the oracle's own language model answer from the text itself?

The base model (no adapter) reads each item's text and question as a plain chat and answers by
log-likelihood: the card's held-out classification items (``text_baseline``) and every question
family's test rows per question kind (``family_text_baseline``). Near chance (AUROC near 0.5)
means the oracle's language model does not understand the question even with the text in view,
so no reading of activations can be expected to answer it out of training. Measured figures are
in ORACLE_CARD.md ("Sweep W and the text ceilings").

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/text_ceiling.py --data-dir shared/data [--n 60]
"""

from __future__ import annotations

import argparse
import datetime
import time

import torch
from _machine import cpu_name

import activation_oracles as ao
from activation_oracles.evals.text_ceiling import family_text_baseline, text_baseline
from activation_oracles.training.families import FAMILIES


def _fmt(r: dict) -> str:
    acc = f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
    auc = (f"{r['auroc']:.2f} [{r['auroc_low']:.2f}, {r['auroc_high']:.2f}]" if "auroc" in r else "")
    return f"| {r['eval']} | {r['n']} | {acc} | {100 * r['chance']:.0f}% | {auc} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="the shared data folder (classification/, truthfulqa/)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=60, help="test rows per family and question kind")
    ap.add_argument("--card-n", type=int, default=40, help="items per held-out task (the card's 40)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = ao.load_model(args.model)
    print(f"{args.model}; {cpu_name()}, {torch.get_num_threads()} threads; {datetime.date.today().isoformat()}\n")
    print("| items | n | accuracy (Wilson 95%) | chance | AUROC of Yes-No margin (bootstrap 95%) |")
    print("|---|---:|---|---:|---|")
    for family in FAMILIES:
        for r in family_text_baseline(model, data_dir=args.data_dir, families=[family], n_per_kind=args.n,
                                      seed=args.seed):
            print(_fmt(r), flush=True)
    for r in text_baseline(model, data_dir=args.data_dir, n_per_eval=args.card_n, seed=args.seed,
                           evals=["classification_held_out"]):
        print(_fmt(r), flush=True)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
