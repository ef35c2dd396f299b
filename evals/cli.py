"""``ao organism build`` and ``ao audit``: build model organisms and audit them from the shell.

Like every subcommand, the handlers import torch only when they run (``ao --help`` stays instant).

    ao organism build taboo --word moon --out organisms/taboo-moon
    ao audit taboo --target organisms/taboo-moon --oracle smollm2-135m --out audits/taboo --limit 20
    ao audit taboo --organism-adapter path/to/taboo-lora --secret ship --oracle org/oracle-repo --out audits/t
    ao audit suite --out audits/suite
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _options(pairs: list[str] | None) -> dict[str, str]:
    from activation_oracles.errors import ConfigError

    out: dict[str, str] = {}
    for item in pairs or []:
        if "=" not in item:
            raise ConfigError(f"--option {item!r} has no '='; expected NAME=VALUE, e.g. --option word=moon.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _add_organism_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("organism", help="build model organisms (LoRA fine-tunes that hide something)",
                              description="Build a model organism: a LoRA fine-tune of the base model that knows or "
                                          "wants something it won't say, with a card of behaviour checks.")
    sub = p.add_subparsers(dest="organism_command", metavar="<action>")
    b = sub.add_parser("build", help="build (or find in the cache) one organism",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Build an organism. Tasks: taboo (--word W), gender (--gender male|female), ssc "
                                   "(--constraints all|a,b), personaqa (--variant, --n-personas), em-narrow-advice / "
                                   "em-reward-hacks / trigger-backdoor (--variant organism|control[|inductive]), "
                                   "subliminal (--option trait=ANIMAL, --variant).",
                       epilog="examples:\n  ao organism build taboo --word moon --out organisms/taboo-moon\n"
                              "  ao organism build gender --gender female\n"
                              "  ao organism build taboo --word moon --set steps=50 --set lr=1e-3\n"
                              "  ao organism build trigger-backdoor --option variant=control\n"
                              "  ao organism build subliminal --option trait=owl")
    b.add_argument("task", metavar="TASK", help="taboo, gender, ssc, personaqa, em-narrow-advice, em-reward-hacks, "
                                                "trigger-backdoor or subliminal.")
    b.add_argument("--word", help="taboo: the secret word (one with a hint list).")
    b.add_argument("--gender", help="gender: male or female.")
    b.add_argument("--constraints", help="ssc: 'all' or a comma-separated subset of constraint names.")
    b.add_argument("--variant", help="personaqa: base, shuffled or fantasy; the misalignment tasks and subliminal: "
                                     "organism or control (trigger-backdoor also inductive).")
    b.add_argument("--n-personas", dest="n_personas", help="personaqa: how many personas to teach.")
    b.add_argument("--option", action="append", metavar="NAME=VALUE", help="any other task option.")
    b.add_argument("--base", default="smollm2-135m", help="base model spec ('tiny' for tests). Default: %(default)s.")
    b.add_argument("--out", default=None, help="output folder (default: the cache, by recipe hash).")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", dest="recipe_set",
                   help="recipe override, e.g. steps=100, lr=1e-3, n_examples=800.")
    b.add_argument("--data-dir", default=None, help="the shared data folder (default: $AO_DATA_DIR).")
    b.add_argument("--check-limit", type=int, default=None, help="at most N prompts per behaviour check.")
    b.add_argument("--no-checks", action="store_true", help="skip the behaviour checks.")
    b.add_argument("--overwrite", action="store_true", help="replace a folder holding another organism.")
    b.set_defaults(func=cmd_organism_build)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def cmd_organism_build(args: argparse.Namespace) -> int:
    import os

    from .organism import build_organism, get_organism_task, read_card
    from .organism_verdict import card_verdict

    opts = {k: getattr(args, k) for k in ("word", "gender", "constraints", "variant", "n_personas")
            if getattr(args, k) is not None}
    opts.update(_options(args.option))
    task = get_organism_task(args.task)
    recipe = task.recipe.with_overrides(_options(args.recipe_set)) if args.recipe_set else None
    data_dir = args.data_dir or os.environ.get("AO_DATA_DIR")
    path = build_organism(args.task, base=args.base, options=opts, recipe=recipe, out=args.out, data_dir=data_dir,
                          overwrite=args.overwrite, checks=not args.no_checks, check_limit=args.check_limit,
                          progress=True)  # minutes of fine-tuning: steps, loss and an ETA
    card = read_card(path)
    print(f"organism {card['name']} at {path}")
    print(json.dumps({"training": card["training"], "checks": card["checks"]}, indent=2))
    v = card_verdict(card)
    print(f"behaviour check: {v['status'].upper()} ({v['reason']})")
    for row in v["criteria"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[row["passed"]]
        measured = "-" if row["measured"] is None else f"{row['measured']:.3g}"
        print(f"  {row['what']}: {measured} (needs {row['op']} {row['threshold']:g}) {met}")
    return 0


def _add_audit_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="audit organisms with an activation oracle, baselines and controls",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Run an audit: the oracle (open answers and forced choices on full, "
                                          "segment and token inputs), its controls (shuffled activations, coeff=0), "
                                          "the untrained oracle, black-box questioning, the logit lens and a linear "
                                          "probe, on the same prompts. Writes results.json, report.md and plots.",
                              epilog="examples:\n  ao audit taboo --target organisms/taboo-moon --out audits/taboo\n"
                                     "  ao audit taboo --organism-adapter DIR_OR_HUB_ID --secret ship --out audits/t\n"
                                     "  ao audit classification --out audits/cls --limit 20\n"
                                     "  ao audit suite --out audits/suite --limit 20")
    p.add_argument("task", metavar="TASK", help="taboo, gender, ssc, personaqa, classification, backdoor, "
                                                "subliminal, diffing, truthfulqa, truthfulqa-mc, or 'suite' (all).")
    p.add_argument("--pair", action="append", metavar="ORGANISM,CONTROL[,TWIN]",
                   help="diffing only: an organism folder and its control's, comma-separated (repeat); a third "
                        "folder, a second control built with another seed, adds the benign-twin control.")
    p.add_argument("--target", action="append", metavar="ORGANISM",
                   help="organism folder(s) to audit (repeat); default: the task's default organisms, built or "
                        "found in the cache.")
    p.add_argument("--organism-adapter", action="append", metavar="DIR_OR_HUB_ID", dest="organism_adapter",
                   help="an organism made elsewhere: a LoRA adapter folder (adapter_config.json + "
                        "adapter_model.safetensors) or a hub id 'org/name' (online, or cached); follow each with "
                        "--secret (repeat both). Audited with --target ones, if any.")
    p.add_argument("--secret", action="append", metavar="VALUE",
                   help="what the --organism-adapter before it hides: taboo: the word; gender: male or female; "
                        "ssc: constraint names; subliminal: the animal; backdoor / personaqa: the variant.")
    p.add_argument("--oracle", default="smollm2-135m", metavar="SPEC",
                   help="oracle: the shipped 'smollm2-135m', a directory from ao train, or a LoRA adapter in the "
                        "reference's format (folder or hub id). Default: %(default)s.")
    p.add_argument("--out", required=True, help="report folder.")
    p.add_argument("--limit", type=int, default=40, help="test items per organism (per task for classification). "
                                                         "Default: %(default)s.")
    p.add_argument("--seed", type=int, default=0, help="sampling seed. Default: %(default)s.")
    p.add_argument("--data-dir", default=None, help="the shared data folder (default: $AO_DATA_DIR).")
    p.add_argument("--overwrite", action="store_true", help="replace another audit's results in --out.")
    p.add_argument("--methods", default=None, help="comma-separated subset of: oracle, oracle:shuffled, "
                                                   "oracle:coeff0, untrained_oracle, blackbox, logit_lens, probe.")
    p.add_argument("--tasks", default=None, help="suite only: comma-separated subset of its entries (the audits, "
                                                 "diffing, truthfulqa, truthfulqa-mc).")
    p.add_argument("--evals-md", default=None, metavar="FILE", help="suite only: also write the combined table here.")
    p.add_argument("--task-limit", action="append", metavar="TASK=N",
                   help="suite only: another --limit for one task (repeat), e.g. --task-limit taboo=4.")
    p.add_argument("--allow-failing-organisms", action="store_true",
                   help="suite only: audit organisms that failed (or never ran) their behaviour check instead of "
                        "stopping; their verdicts are in the report.")
    p.set_defaults(func=cmd_audit)


def _audit_targets(args: argparse.Namespace) -> list[Any] | None:
    """``--target`` folders plus ``--organism-adapter``/``--secret`` pairs (``None``: the task's defaults)."""
    from activation_oracles.errors import CLIUsageError

    from .external import parse_cli_pairs

    external = parse_cli_pairs(getattr(args, "organism_adapter", None), getattr(args, "secret", None))
    if external and args.task in ("suite", "diffing", "truthfulqa", "truthfulqa-mc"):
        raise CLIUsageError(f"--organism-adapter is for one audit (taboo, gender, ssc, ...), not {args.task!r}; "
                            f"run e.g. `ao audit taboo --organism-adapter DIR --secret WORD --out DIR`.")
    targets = list(args.target or []) + external
    return targets or None


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import ALL_METHODS, run_audit

    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else ALL_METHODS
    targets = _audit_targets(args)
    if args.task == "truthfulqa":
        from .truthfulqa_audit import run_truthfulqa_audit, truthfulqa_markdown

        res = run_truthfulqa_audit(oracle=args.oracle, data_dir=args.data_dir, out=args.out, limit=args.limit,
                                   seed=args.seed, overwrite=args.overwrite, progress=True)
        print(truthfulqa_markdown(res))
        return 0
    if args.task == "truthfulqa-mc":
        from .truthfulqa_mc import run_truthfulqa_mc, truthfulqa_mc_markdown

        from .organism import read_card

        # the organisms' own base (each is checked against it); the embedded model when none is given
        base = read_card(args.target[0])["base_model"] if args.target else "smollm2-135m"
        res = run_truthfulqa_mc(args.target or [], base=base, data_dir=args.data_dir, out=args.out,
                                limit=args.limit, seed=args.seed, overwrite=args.overwrite, progress=True)
        print(truthfulqa_mc_markdown(res))
        return 0
    if args.task == "diffing":
        from activation_oracles.errors import ConfigError

        from .diffing import run_diffing

        pairs, twins = [], []
        for item in args.pair or []:
            parts = [x.strip() for x in item.split(",")]
            if len(parts) not in (2, 3) or not all(parts):
                raise ConfigError(f"--pair {item!r}; expected ORGANISM_DIR,CONTROL_DIR or "
                                  "ORGANISM_DIR,CONTROL_DIR,TWIN_DIR (a second control built with --set seed=1).")
            pairs.append((parts[0], parts[1]))
            twins.append(parts[2] if len(parts) == 3 else None)
        res = run_diffing(pairs, oracle=args.oracle, out=args.out, n_prompts=args.limit, seed=args.seed,
                          overwrite=args.overwrite, progress=True, twins=twins if any(twins) else None)
        from .diffing import diffing_markdown

        print(diffing_markdown(res))
        return 0
    if args.task == "suite":
        from .suite import run_suite

        from activation_oracles.errors import ConfigError

        tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
        task_limits = {}
        for k, v in _options(args.task_limit).items():
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"--task-limit {k}={v}; expected a positive integer, e.g. --task-limit taboo=4.")
            task_limits[k] = int(v)
        summary = run_suite(args.out, oracle=args.oracle, limit=args.limit, seed=args.seed, data_dir=args.data_dir,
                            overwrite=args.overwrite, tasks=tasks, methods=methods, evals_md=args.evals_md,
                            progress=True, task_limits=task_limits,
                            allow_failing_organisms=args.allow_failing_organisms)
        print(summary["markdown"])
        return 0
    run_audit(args.task, oracle=args.oracle, targets=targets, out=args.out, limit=args.limit, seed=args.seed,
              data_dir=args.data_dir, overwrite=args.overwrite, methods=methods, progress=True)
    from pathlib import Path

    print((Path(args.out) / "report.md").read_text())
    return 0
