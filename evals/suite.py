"""``ao audit suite``: every audit on its default organisms, one combined report.

The oracle is loaded once and every organism is attached to its base model (one
copy of the weights). Each task writes its own folder (``OUT/<task>/``); the
suite writes ``OUT/report.md`` and ``OUT/suite.json`` with the combined table, and,
with ``evals_md``, the table plus the command that made it (EVALS.md).

>>> from activation_oracles.evals.suite import SUITE_TASKS
>>> SUITE_TASKS
('taboo', 'gender', 'ssc', 'personaqa', 'classification')
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from activation_oracles.errors import OutputDirError

SUITE_TASKS = ("taboo", "gender", "ssc", "personaqa", "classification")


def _matching_results(folder: Path, *, oracle: str | None, limit: int | None, seed: int,
                      methods: Sequence[str]) -> dict[str, Any] | None:
    """An audit's earlier results in ``folder`` if they were made with these settings, else None."""
    from .report import load_results

    if oracle is None or not (folder / "results.json").is_file():
        return None
    try:
        res = load_results(folder / "results.json")
    except Exception:  # unreadable: run it again
        return None
    c = res.get("config", {})
    same = c.get("oracle") == oracle and c.get("limit") == limit and c.get("seed") == seed and \
        list(c.get("methods", [])) == list(methods)
    return res if same else None


def run_suite(out: str | os.PathLike[str], *, oracle: Any = "smollm2-135m", limit: int | None = 40, seed: int = 0,
              data_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
              tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              evals_md: str | os.PathLike[str] | None = None, progress: bool = False,
              command: str | None = None, task_limits: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the audits in ``tasks`` (default: all of :data:`SUITE_TASKS`) and combine their reports.

    ``task_limits`` overrides ``limit`` for some tasks (e.g. ``{"taboo": 4}``: its items are costlier).
    """
    from activation_oracles.loading import load_oracle
    from activation_oracles.oracle import ActivationOracle

    from .audit import ALL_METHODS, run_audit
    from .audit_task import get_audit_task
    from .report import combined_markdown

    names = list(tasks or SUITE_TASKS)
    for n in names:
        get_audit_task(n)  # unknown names fail before any work
    root = Path(out)
    if (root / "suite.json").exists() and not overwrite:
        raise OutputDirError(f"{str(root)!r} already holds a suite's results; pass --overwrite or another --out.")
    orc = oracle if isinstance(oracle, ActivationOracle) else load_oracle(oracle)
    label = oracle if isinstance(oracle, str) else None
    want_methods = list(methods or ALL_METHODS)
    results = []
    reused = []
    t0 = time.perf_counter()
    limits = {n: (task_limits or {}).get(n, limit) for n in names}
    for n in names:
        done = _matching_results(root / n, oracle=label, limit=limits[n], seed=seed, methods=want_methods)
        if done is not None and not overwrite:
            results.append(done)  # the same audit, already run with these settings
            reused.append(n)
            continue
        results.append(run_audit(n, oracle=orc, out=root / n, limit=limits[n], seed=seed, data_dir=data_dir,
                                 overwrite=True, methods=tuple(want_methods), progress=progress,
                                 oracle_label=label))
    table = combined_markdown(results)
    wall = round(time.perf_counter() - t0, 1)
    cmd = command or (f"ao audit suite --oracle {oracle if isinstance(oracle, str) else '<oracle>'} --out {root.name} "
                      f"--limit {limit} --seed {seed}" +
                      "".join(f" --task-limit {k}={v}" for k, v in sorted((task_limits or {}).items())))
    if reused:
        cmd += f"  (reused earlier results with the same settings for: {', '.join(reused)})"
    header = (f"Command: `{cmd}`\n\nMachine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores; "
              f"date {date.today().isoformat()}; wall time {wall / 60:.1f} min.\n")
    md = "# Audit suite\n\n" + header + "\n" + table
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.md").write_text(md)
    (root / "suite.json").write_text(json.dumps({"tasks": names, "command": cmd, "wall_s": wall,
                                                 "results": [str(root / n / "results.json") for n in names]},
                                                indent=2))
    if evals_md is not None:
        Path(evals_md).write_text(md)
    return {"markdown": md, "results": results, "wall_s": wall}
