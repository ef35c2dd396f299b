"""Is an organism's TruthfulQA MC shift beyond what two benign fine-tunes differ by? Benign twins at 817 questions.

The suite's MC entry scores the base model and each organism; an organism's difference from its
control (paired over the same questions) can be the organism's trait or simply two fine-tunes
differing. This scores the benign twins (second controls, another seed; the diffing audit's) on the
same questions and prints, per pair, organism - control, twin - control and organism - twin, each
with a paired bootstrap 95% interval. The base model's scores come from the suite's checkpoint when one is given
(``--base-checkpoint``: a ``partial/base-*.json`` of the same run), so only the twins are scored.

Run: AO_DATA_DIR=../shared/data .venv/bin/python benchmarks/truthfulqa_mc_twins.py [results/suite-n40/truthfulqa-mc]
         [--out OUT] [--base-checkpoint base-....json] [--tasks em-narrow-advice trigger-backdoor ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from activation_oracles.evals.organism import organism_dir
from activation_oracles.evals.suite import _pair_options
from activation_oracles.evals.truthfulqa_mc import PARTIAL_DIR, paired_difference, run_truthfulqa_mc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite_mc", nargs="?", default="results/suite-n40/truthfulqa-mc",
                    help="the suite's truthfulqa-mc folder (its results.json)")
    ap.add_argument("--out", default=None, help="a new folder for the twins' run (default: a temporary one)")
    ap.add_argument("--base-checkpoint", help="the suite's base-model checkpoint, reused instead of scoring the base")
    ap.add_argument("--tasks", nargs="+", default=["em-narrow-advice", "trigger-backdoor"],
                    help="organism tasks with a diffing pair: em-narrow-advice, em-reward-hacks, trigger-backdoor, "
                         "subliminal")
    args = ap.parse_args()
    args.out = args.out or tempfile.mkdtemp(prefix="mc-twins-")
    suite = json.loads((Path(args.suite_mc) / "results.json").read_text())
    cfg = suite["config"]
    twins = []
    names = []  # (organism, control) as the suite's results name them: the cards' names
    for task in args.tasks:
        organism, control = (organism_dir(task, base=cfg["base"], options=o) for o in _pair_options(task))
        names.append(tuple(json.loads((d / "organism.json").read_text())["name"] for d in (organism, control)))
        twin = control.with_name(f"{control.name.rsplit('-', 1)[0]}-twin")
        if not twin.is_dir():
            raise SystemExit(f"no benign twin at {twin}; the suite's diffing entry builds it.")
        twins.append(twin)
    if args.base_checkpoint:
        (Path(args.out) / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(args.base_checkpoint, Path(args.out) / PARTIAL_DIR)
    res = run_truthfulqa_mc(twins, base=cfg["base"], out=args.out, limit=cfg["limit"], seed=cfg["seed"],
                            progress=True)
    pq, tq = suite["per_question"], res["per_question"]
    if [x["mc2"] for x in tq["base"]] != [x["mc2"] for x in pq["base"]]:
        raise SystemExit("the base model's scores differ from the suite's: not the same questions in the same order.")
    print(f"\n{len(pq['base'])} questions; paired differences in points, bootstrap 95% intervals; "
          f"scoring {res['extra']['scoring_s']}")
    print("| pair | metric | organism - control | benign twin - control | organism - twin |")
    print("|---|---|---|---|---|")
    for task, twin in zip(args.tasks, twins):
        org_name, ctl_name = names[args.tasks.index(task)]
        org, ctl = pq[org_name], pq[ctl_name]
        tw = tq[_card_name(res, twin)]  # a twin's card keeps its control's name
        for k in ("mc1", "mc2"):
            a = paired_difference([x[k] * 100 for x in org], [x[k] * 100 for x in ctl])
            b = paired_difference([x[k] * 100 for x in tw], [x[k] * 100 for x in ctl])
            c = paired_difference([x[k] * 100 for x in org], [x[k] * 100 for x in tw])
            print(f"| {task} | {k.upper()} | " + " | ".join(f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"
                                                         for d in (a, b, c)) + " |")


def _card_name(res: dict, twin: Path) -> str:
    card = json.loads((twin / "organism.json").read_text())
    names = [k for k in res["per_question"] if k == card["name"]]
    if len(names) != 1:
        raise SystemExit(f"cannot tell the twin {twin.name}'s scores apart in the run ({list(res['per_question'])}).")
    return names[0]


if __name__ == "__main__":
    main()
