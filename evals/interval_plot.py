"""Plots of the AUROC and MC evaluations: one figure of point estimates with 95% intervals.

The accuracy audits plot grouped bars (:mod:`.report`); model diffing, the TruthfulQA oracle
audit and TruthfulQA MC1/MC2 report one figure per row instead (an AUROC or a score, each with
its interval), so they share this dot-and-whisker plot: one line per row, a reference line
(chance 0.5, or none), and an optional second marker per row (diffing's benign twin).

:func:`plot_results` draws the figure of a ``results.json`` of those three tasks from the file
alone, so a report written before plots existed can be given one:

>>> import json, tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> res = {"task": "truthfulqa", "aggregates": [
...     {"method": "oracle", "mode": "full", "auroc": 0.52, "ci_low": 0.47, "ci_high": 0.57},
...     {"method": "probe (GoT)", "mode": "full", "auroc": 0.61, "ci_low": 0.56, "ci_high": 0.66}]}
>>> _ = (d / "results.json").write_text(json.dumps(res))
>>> [p.name for p in plot_results(d)]
['plot_auroc.png']
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from activation_oracles.errors import OutputDirError

PLOT_FILES = {"diffing": "plot_auroc.png", "truthfulqa": "plot_auroc.png", "truthfulqa-mc": "plot_mc.png"}
"""The figure each task's report links to, in its own folder."""


def plot_intervals(path: str | os.PathLike[str], labels: Sequence[str],
                   series: Mapping[str, Sequence[tuple[float, float, float] | None]], *, title: str, xlabel: str,
                   reference: float | None = None, reference_label: str = "") -> Path:
    """One row per label; per series a point with its interval ``(value, low, high)`` (``None``: no point).

    Written to a temporary file and moved into place, so a reader never sees half a PNG."""
    import matplotlib
    matplotlib.use("Agg")  # headless: evaluations run on servers without a display
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.32 * max(n, 1) * max(1, len(series))))
    try:
        k = len(series)
        for j, (name, points) in enumerate(series.items()):
            ys, xs, lo, hi = [], [], [], []
            for i, p in enumerate(points):
                if p is None:
                    continue
                value, low, high = p
                ys.append(n - 1 - i + (j - (k - 1) / 2) * 0.25)
                xs.append(value)
                lo.append(max(0.0, value - low))
                hi.append(max(0.0, high - value))
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, label=name)
        if reference is not None:
            ax.axvline(reference, linestyle="--", color="grey", label=reference_label or None)
        ax.set_yticks(range(n))
        ax.set_yticklabels(list(reversed(labels)), fontsize="small")
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.legend(fontsize="small", loc="best")
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def _auroc(a: Mapping[str, Any]) -> tuple[float, float, float]:
    return float(a["auroc"]), float(a["ci_low"]), float(a["ci_high"])


def plot_results(folder: str | os.PathLike[str]) -> list[Path]:
    """Draw the figure of the ``results.json`` in ``folder`` (diffing, truthfulqa or truthfulqa-mc) beside it."""
    folder = Path(folder)
    path = folder / "results.json"
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OutputDirError(f"{str(path)!r} could not be read as an evaluation's results ({e}); expected the "
                             "results.json that ao audit diffing/truthfulqa/truthfulqa-mc wrote.") from None
    task = res.get("task")
    if task not in PLOT_FILES:
        raise OutputDirError(f"{str(path)!r} holds results of task {task!r}; this plot is for "
                             f"{', '.join(PLOT_FILES)} (the accuracy audits draw their own bars).")
    out = folder / PLOT_FILES[task]
    if task == "truthfulqa-mc":
        rows = res.get("rows") or []
        plot_intervals(out, [r["model"] for r in rows],
                       {k.upper(): [(r[k], *r[f"{k}_ci"]) for r in rows] for k in ("mc1", "mc2")},
                       title=f"TruthfulQA MC1 / MC2 per model ({res.get('config', {}).get('questions', '?')} "
                             "questions, 95% intervals)", xlabel="score")
        return [out]
    aggs = res.get("aggregates") or []
    if task == "diffing":
        labels = [f"{a['pair']}: {a['method']} {a['mode']}" for a in aggs]
        series: dict[str, list[Any]] = {"organism vs control": [_auroc(a) for a in aggs]}
        if any(a.get("benign_twin") for a in aggs):
            series["benign twin vs control"] = [
                (a["benign_twin"]["benign_auroc"],) * 3 if a.get("benign_twin") else None for a in aggs]
        title = "Model diffing: AUROC organism vs control (95% bootstrap intervals)"
    else:
        labels = [f"{a['method']} {a['mode']}" for a in aggs]
        series = {"true vs false answer": [_auroc(a) for a in aggs]}
        title = "TruthfulQA oracle audit: AUROC of P(true) (95% bootstrap intervals)"
    plot_intervals(out, labels, series, title=title, xlabel="AUROC", reference=0.5, reference_label="chance 0.5")
    return [out]


__all__ = ["PLOT_FILES", "plot_intervals", "plot_results"]
