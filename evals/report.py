"""Audit reports: aggregates with 95% Wilson intervals, ``results.json``, ``report.md`` and plots.

An audit records one row per (example, method, input mode, kind)::

    {"id": str, "organism": str, "method": str, "mode": str, "kind": str,
     "correct": bool, "truth": str, "answer": str, "p_truth": float | None}

``mode`` is ``full``, ``segment``, ``token`` or ``-`` (a method that reads no activations);
``kind`` is ``open`` (a free-text answer scored by a rule) or ``choice`` (a forced choice).
:func:`aggregate` pools the rows per (method, mode, kind); :func:`write_report` writes
everything an audit leaves behind into its output folder; :func:`combined_markdown` puts
several audits in one table.

>>> def row(method, kind, correct, organism="o1"):
...     return {"id": "x", "organism": organism, "method": method, "mode": "full", "kind": kind,
...             "correct": correct, "truth": "t", "answer": "a", "p_truth": None}
>>> rows = [row("probe", "open", True), row("oracle", "open", True), row("oracle", "open", False)]
>>> for agg in aggregate(rows, {"open": 0.0}):
...     print(agg["method"], agg["kind"], agg["correct"], agg["n"], format_accuracy(agg))
oracle open 1 2 50.0% [9.5, 90.5]
probe open 1 1 100.0% [20.7, 100.0]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from activation_oracles.errors import DataError, OutputDirError

from activation_oracles.files import atomic_write_bytes
from .stats import accuracy_row

METHODS = ("oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle", "blackbox:direct", "blackbox:prefill",
           "logit_lens", "probe")
MODES = ("full", "segment", "token", "-")
KINDS = ("open", "choice")
ALL = "all"  # the organism field of aggregates pooled over every organism
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
ROW_KEYS = ("method", "mode", "kind", "correct")  # what aggregation needs from a row
RESULTS_KEYS = ("task", "config", "chance", "rows", "aggregates")


# -- ordering ------------------------------------------------------------------------------------------

def _order(known: Sequence[str]):
    """A sort key: the known names in their display order, then any others alphabetically."""
    index = {name: i for i, name in enumerate(known)}
    return lambda name: (index.get(name, len(known)), "" if name in index else str(name))


method_key = _order(METHODS)
mode_key = _order(MODES)
kind_key = _order(KINDS)


# -- aggregation ---------------------------------------------------------------------------------------

def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for i, r in enumerate(rows):
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise DataError(f"audit row {i} lacks {missing}; expected the keys {list(ROW_KEYS)} "
                            f"(and id, organism, truth, answer, p_truth). Row: {dict(r)!r}")
        if r["correct"] not in (True, False):
            raise DataError(f"audit row {i} has correct={r['correct']!r}; expected a bool.")


def _pool(rows: Iterable[Mapping[str, Any]], organism: str, chance: Mapping[str, float]) -> list[dict[str, Any]]:
    """One aggregate per (method, mode, kind) over ``rows``, in display order."""
    counts: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        c = counts.setdefault((r["method"], r["mode"], r["kind"]), [0, 0])
        c[0] += bool(r["correct"])
        c[1] += 1
    keys = sorted(counts, key=lambda k: (method_key(k[0]), mode_key(k[1]), kind_key(k[2])))
    return [{"organism": organism, "method": m, "mode": mode, "kind": kind, **accuracy_row(*counts[(m, mode, kind)]),
             "chance": chance.get(kind)} for m, mode, kind in keys]


def aggregate(rows: Sequence[Mapping[str, Any]], chance: Mapping[str, float]) -> list[dict[str, Any]]:
    """Accuracy with a 95% Wilson interval per (method, mode, kind).

    Each aggregate is ``{organism, method, mode, kind, correct, n, accuracy, ci_low, ci_high,
    chance}`` where ``chance`` is ``chance[kind]`` (None when absent). The aggregates pooled
    over all rows (``organism == "all"``) come first; when the rows name more than one
    organism, per-organism aggregates follow, organisms sorted by name. Within each block
    the order is method display order, then mode (full, segment, token, -), then kind
    (open, choice); unknown names sort after the known ones.
    """
    _check_rows(rows)
    out = _pool(rows, ALL, chance)
    organisms = sorted({r["organism"] for r in rows if r.get("organism") is not None}, key=str)
    if len(organisms) > 1:
        for org in organisms:
            out += _pool((r for r in rows if r.get("organism") == org), org, chance)
    return out


# -- formatting ----------------------------------------------------------------------------------------

def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def format_accuracy(agg: Mapping[str, Any], *, digits: int = 1) -> str:
    """``"47.5% [32.9, 62.5]"``: accuracy and its interval, in percent.

    >>> format_accuracy({"accuracy": 0.475, "ci_low": 0.3292, "ci_high": 0.6254})
    '47.5% [32.9, 62.5]'
    """
    return f"{_pct(agg['accuracy'], digits)}% [{_pct(agg['ci_low'], digits)}, {_pct(agg['ci_high'], digits)}]"


def _chance_text(chance: Mapping[str, float | None], kinds: Sequence[str]) -> str:
    parts = [f"{k} {_pct(chance[k])}%" if chance.get(k) is not None else f"{k} n/a" for k in kinds]
    return ", ".join(parts)


def _kinds(aggs: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({a["kind"] for a in aggs}, key=kind_key)


def _method_mode_table(aggs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per (method, mode), an accuracy and an n column per kind."""
    kinds = _kinds(aggs)
    cells = {(a["method"], a["mode"], a["kind"]): a for a in aggs}
    pairs = sorted({(a["method"], a["mode"]) for a in aggs}, key=lambda p: (method_key(p[0]), mode_key(p[1])))
    lines = ["| method | mode | " + " | ".join(f"{k} | n" for k in kinds) + " |",
             "|---|---|" + "---:|---:|" * len(kinds)]
    for method, mode in pairs:
        row = []
        for k in kinds:
            a = cells.get((method, mode, k))
            row += [format_accuracy(a), str(a["n"])] if a else ["", ""]
        lines.append(f"| {method} | {mode} | " + " | ".join(row) + " |")
    return lines


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The ``report.md`` text of one results dict (as :func:`write_report` builds it)."""
    aggs = results["aggregates"]
    pooled = [a for a in aggs if a["organism"] == ALL]
    lines = [f"# Audit: {results['task']}", "", "## Config", ""]
    lines += [f"- {k}: {_config_value(v)}" for k, v in results["config"].items()] or ["- (none)"]
    lines += ["", "## Accuracy", "", "Percent correct with a 95% Wilson interval; n is the number of rows.", ""]
    if pooled:
        lines += _method_mode_table(pooled)
        lines += ["", f"Chance: {_chance_text(results['chance'], _kinds(pooled))}.", ""]
        lines += [f"![{k}]({_plot_name(k)})" for k in _kinds(pooled)]
    else:
        lines.append("No rows.")
    organisms = sorted({a["organism"] for a in aggs if a["organism"] != ALL}, key=str)
    for org in organisms:
        lines += ["", f"### Organism: {org}", ""]
        lines += _method_mode_table([a for a in aggs if a["organism"] == org])
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


# -- files ---------------------------------------------------------------------------------------------

def write_results(out: Path, results: dict[str, Any], markdown: str) -> None:
    """Write ``results.json`` and ``report.md`` into ``out``, each atomically (the AUROC-style entries)."""
    atomic_write_bytes(out / RESULTS_FILE, json.dumps(results, indent=1).encode())
    atomic_write_bytes(out / "report.md", markdown.encode())


def _plot_name(kind: str) -> str:
    # Kinds become file names; keep only characters that are safe everywhere.
    return f"plot_{re.sub(r'[^A-Za-z0-9_-]', '_', kind)}.png"


def _plot_kind(path: Path, task: str, kind: str, aggs: Sequence[Mapping[str, Any]], chance: float | None) -> None:
    """Grouped bars (one group per method, one bar per mode) with Wilson error bars and a chance line."""
    import matplotlib
    matplotlib.use("Agg")  # headless: audits run on servers without a display
    import matplotlib.pyplot as plt

    methods = sorted({a["method"] for a in aggs}, key=method_key)
    modes = sorted({a["mode"] for a in aggs}, key=mode_key)
    cells = {(a["method"], a["mode"]): a for a in aggs}
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods) + 2), 4.5))
    try:
        for j, mode in enumerate(modes):
            xs, ys, err_lo, err_hi = [], [], [], []
            for i, m in enumerate(methods):
                a = cells.get((m, mode))
                if a is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(100 * a["accuracy"])
                err_lo.append(max(0.0, 100 * (a["accuracy"] - a["ci_low"])))  # float noise at 0%/100%
                err_hi.append(max(0.0, 100 * (a["ci_high"] - a["accuracy"])))
            label = "no activations (-)" if mode == "-" else f"mode {mode}"
            ax.bar(xs, ys, width, yerr=[err_lo, err_hi], capsize=3, label=label)
        if chance is not None:
            ax.axhline(100 * chance, linestyle="--", color="grey", label=f"chance {_pct(chance)}%")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task}: {kind} answers (95% Wilson intervals)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def write_report(out_dir: str | os.PathLike[str], *, task: str, config: Mapping[str, Any],
                 rows: Sequence[Mapping[str, Any]], chance: Mapping[str, float], notes: Sequence[str] = (),
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``report.md`` and one ``plot_<kind>.png`` per kind into ``out_dir``.

    ``results.json`` holds ``{task, config, chance, rows, aggregates, notes, extra}``.
    Returns the paths written, keyed ``results``, ``report`` and ``plot_<kind>``. Call
    :func:`prepare_out_dir` first: this function replaces whatever it finds. A plot left
    by an earlier run for a kind this run lacks is removed, so the folder never mixes runs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"task": task, "config": dict(config), "chance": dict(chance), "rows": [dict(r) for r in rows],
               "aggregates": aggregate(rows, chance), "notes": list(notes),
               "extra": dict(extra) if extra is not None else None}
    paths = {"results": out / RESULTS_FILE, "report": out / REPORT_FILE}
    # default=str: configs often hold Paths; everything else in a results dict is plain JSON.
    atomic_write_bytes(paths["results"], (json.dumps(results, indent=2, default=str) + "\n").encode())
    atomic_write_bytes(paths["report"], render_markdown(results).encode())
    pooled = [a for a in results["aggregates"] if a["organism"] == ALL]
    kinds = _kinds(pooled)
    for kind in kinds:
        path = out / _plot_name(kind)
        _plot_kind(path, task, kind, [a for a in pooled if a["kind"] == kind], chance.get(kind))
        paths[f"plot_{kind}"] = path
    for kind in KINDS:
        if kind not in kinds:
            (out / _plot_name(kind)).unlink(missing_ok=True)
    return paths


def _existing_task(results_path: Path) -> str:
    try:
        return repr(json.loads(results_path.read_text())["task"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown (the file is unreadable)"


def prepare_out_dir(out_dir: str | os.PathLike[str], *, task: str, overwrite: bool) -> Path:
    """Create ``out_dir`` for an audit of ``task``; refuse one that already holds results.

    Raises :class:`~activation_oracles.errors.OutputDirError` (changing nothing on disk)
    when ``out_dir`` is a file, or holds a ``results.json`` and ``overwrite`` is False. With
    ``overwrite=True`` the old files stay until :func:`write_report` replaces them, so an
    audit that crashes midway still leaves the previous results readable.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output folder {str(out)!r} for task {task!r} is a file, not a folder; "
                             f"pass another --out.")
    existing = out / RESULTS_FILE
    if existing.exists() and not overwrite:
        raise OutputDirError(f"output folder {str(out)!r} already holds {RESULTS_FILE} of task "
                             f"{_existing_task(existing)}; refusing to overwrite it with task {task!r}. "
                             f"Pass --overwrite to replace it, or another --out.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``results.json`` written by :func:`write_report` (or the folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    expected = f"expected a {RESULTS_FILE} written by an audit, a JSON object with the keys {list(RESULTS_KEYS)}"
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise DataError(f"results file {str(p)!r} does not exist; {expected}.") from None
    except OSError as e:
        raise DataError(f"results file {str(p)!r} cannot be read ({e}); {expected}.") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"results file {str(p)!r} is not valid JSON ({e}); {expected}.") from None
    if not isinstance(results, dict):
        raise DataError(f"results file {str(p)!r} holds a {type(results).__name__}; {expected}.")
    missing = [k for k in RESULTS_KEYS if k not in results]
    if missing:
        raise DataError(f"results file {str(p)!r} lacks the keys {missing}; {expected}.")
    results.setdefault("notes", [])
    results.setdefault("extra", None)
    return results


# -- the suite -----------------------------------------------------------------------------------------

def combined_markdown(results: Sequence[Mapping[str, Any]]) -> str:
    """One markdown table over several audits: a row per task x method x mode, a column per kind.

    Each cell is ``acc% [lo, hi] (n)``; a ``chance`` row opens each task's block. Uses the
    pooled (``organism == "all"``) aggregates, recomputed from the rows when absent.
    """
    blocks = []
    for res in results:
        aggs = res.get("aggregates")
        if aggs is None:
            aggs = aggregate(res["rows"], res["chance"])
        blocks.append((res, [a for a in aggs if a["organism"] == ALL]))
    kinds = sorted({a["kind"] for _, pooled in blocks for a in pooled}, key=kind_key)
    lines = ["| task | method | mode | " + " | ".join(kinds) + " |", "|---|---|---|" + "---:|" * len(kinds)]
    for res, pooled in blocks:
        chance = res.get("chance") or {}
        lines.append(f"| {res['task']} | *chance* | | "
                     + " | ".join(f"{_pct(chance[k])}%" if chance.get(k) is not None else "n/a" for k in kinds) + " |")
        cells = {(a["method"], a["mode"], a["kind"]): a for a in pooled}
        pairs = sorted({(a["method"], a["mode"]) for a in pooled}, key=lambda p: (method_key(p[0]), mode_key(p[1])))
        for method, mode in pairs:
            row = [cells.get((method, mode, k)) for k in kinds]
            lines.append(f"| {res['task']} | {method} | {mode} | "
                         + " | ".join(f"{format_accuracy(a)} ({a['n']})" if a else "" for a in row) + " |")
    return "\n".join(lines) + "\n"
