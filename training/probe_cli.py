"""``ao data probe``: the linear-probe ceiling of every classification task and family.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_data_parser(sub)
>>> p.parse_args(["data", "probe", "--tasks", "gmt/cities"]).tasks
['gmt/cities']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_data_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="inspect training data: probe ceilings of the tasks",
                              description="Commands about the training data.")
    sub = p.add_subparsers(dest="data_command", metavar="<data command>", title="data commands")
    q = sub.add_parser(
        "probe", help="fit a linear probe per task and layer on the positions the builders read",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each task (classification tasks and question families), capture the target's residual\n"
                    "at the text's last token, fit a logistic-regression probe on 70% of the rows and print its\n"
                    "accuracy on the other 30% with a 95% Wilson interval, the majority-class rate and a\n"
                    "shuffled-label control. A task whose ceiling is near chance teaches an oracle nothing.",
        epilog="examples:\n"
               "  ao data probe --data-dir shared/data --tasks gmt/cities family/language\n"
               "  ao data probe --data-dir shared/data --layer-percents 25 50 75 --out probes.json")
    q.add_argument("--data-dir", default=os.environ.get("AO_DATA_DIR"), metavar="DIR",
                   help="folder holding classification/ and truthfulqa/ (default: $AO_DATA_DIR).")
    q.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="task names (gmt/cities, family/language, ...); default: all.")
    q.add_argument("--layer-percents", nargs="+", type=float, default=[50.0], metavar="P",
                   help="depths in percent. Default: 50.")
    q.add_argument("--n", type=int, default=300, help="rows per task, balanced by class. Default: %(default)s.")
    q.add_argument("--model", default="smollm2-135m", metavar="SPEC", help="target model. Default: %(default)s.")
    q.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON here.")
    q.set_defaults(func=cmd_data_probe)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def cmd_data_probe(args: argparse.Namespace) -> int:
    from activation_oracles.cli import CLIUsageError

    from .probe import MIN_ROWS, all_task_names, probe_ceiling, task_rows

    if not args.data_dir:
        raise CLIUsageError("no data folder: pass --data-dir DIR (the folder holding classification/ and "
                            "truthfulqa/) or set AO_DATA_DIR.")
    if not os.path.isdir(args.data_dir):
        raise CLIUsageError(f"--data-dir {args.data_dir!r} is not a folder; pass the folder holding "
                            "classification/ and truthfulqa/.")
    if args.n < MIN_ROWS:
        raise CLIUsageError(f"--n {args.n}: a probe needs at least {MIN_ROWS} rows per task; pass a larger --n.")
    if any(not 0 < p < 100 for p in args.layer_percents):
        raise CLIUsageError(f"--layer-percents {args.layer_percents}: each depth must be in (0, 100).")
    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise CLIUsageError(f"--out {args.out!r}: its folder does not exist; create it first or pick another path.")
    names = args.tasks or all_task_names()
    unknown = sorted(set(names) - set(all_task_names()))
    if unknown:
        raise CLIUsageError(f"--tasks names unknown tasks {unknown}; valid: {', '.join(all_task_names())}.")
    rows = {n: task_rows(args.data_dir, n) for n in names}  # every file read (and checked) before the model loads
    import activation_oracles as ao

    model = ao.load_model(args.model)
    results = []
    print(f"{'task':<42} {'layer':>5} {'n test':>6} {'probe':>6}  {'95% interval':<14} {'majority':>8} {'shuffled':>8}")
    for name in names:
        for pct in args.layer_percents:
            r = probe_ceiling(model, rows[name], task=name, layer_percent=pct, n=args.n)
            results.append(r.to_dict())
            print(f"{name:<42} {r.layer:>5} {r.n_test:>6} {100 * r.accuracy:>5.1f}%  "
                  f"[{100 * r.interval[0]:.1f}, {100 * r.interval[1]:.1f}]{'':<2} {100 * r.majority:>7.1f}% "
                  f"{100 * r.shuffled:>7.1f}%", flush=True)
    if args.out is not None:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return 0
