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
from activation_oracles.evals.suite import _benign_twin, _pair_options
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

    def card_name(folder: Path) -> str:  # the results name models by their cards (a twin keeps its control's)
        return json.loads((folder / "organism.json").read_text())["name"]

    pairs = []  # (task, organism, control, twin folder)
    for task in args.tasks:
        twin = _benign_twin(task, cfg["base"], None, False, build=False)
        if not twin.is_dir():
            raise SystemExit(f"no benign twin at {twin}; the suite's diffing entry builds it.")
        organism, control = (card_name(organism_dir(task, base=cfg["base"], options=o)) for o in _pair_options(task))
        pairs.append((task, organism, control, twin))
    if args.base_checkpoint:
        (Path(args.out) / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(args.base_checkpoint, Path(args.out) / PARTIAL_DIR)
    res = run_truthfulqa_mc([t for *_, t in pairs], base=cfg["base"], out=args.out, limit=cfg["limit"],
                            seed=cfg["seed"], progress=True)
    pq, tq = suite["per_question"], res["per_question"]
    if [x["mc2"] for x in tq["base"]] != [x["mc2"] for x in pq["base"]]:
        raise SystemExit("the base model's scores differ from the suite's: not the same questions in the same order.")
    print(f"\n{len(pq['base'])} questions; paired differences in points, bootstrap 95% intervals; "
          f"scoring {res['extra']['scoring_s']}")
    print("| pair | metric | organism - control | benign twin - control | organism - twin |")
    print("|---|---|---|---|---|")
    for task, organism, control, twin in pairs:
        org, ctl, tw = pq[organism], pq[control], tq[card_name(twin)]
        for k in ("mc1", "mc2"):
            diffs = [paired_difference([x[k] * 100 for x in a], [x[k] * 100 for x in b])
                     for a, b in ((org, ctl), (tw, ctl), (org, tw))]
            cells = [f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]" for d in diffs]
            print(f"| {task} | {k.upper()} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
