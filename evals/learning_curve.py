"""Plot a training run's learning curve: training loss and the in-training evaluation against steps.

Reads ``metrics.jsonl`` of an ``ao train`` output folder (training rows carry ``loss``;
evaluation rows carry ``eval/...`` keys) and writes a PNG with two panels: the training loss,
and the aggregate accuracies of the in-training evaluation (e.g. ``yes_no_acc``).

    python -m activation_oracles.evals.learning_curve runs/smollm2-135m --out learning_curve.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``; a typed error when it is missing or malformed."""
    from activation_oracles.errors import DataError

    path = Path(run_dir) / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{str(path)!r} cannot be read as a metrics log ({exc}); pass an `ao train` output "
                        "folder.") from None


def plot(run_dir: str | Path, out: str | Path, *, extra: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """Write the learning-curve PNG; ``extra`` adds named (step, accuracy) series (e.g. controls)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        for k, v in r.items():
            # Aggregates only (eval/<name>, not eval/<source>/acc): the accuracy and its controls
            # (yes_no_acc, yes_no_acc_shuffled, yes_no_acc_coeff0, exact_match).
            aggregate = k.startswith("eval/") and k.count("/") == 1
            if aggregate and ("_acc" in k or k.endswith(("accuracy", "exact_match"))) and isinstance(v, (int, float)):
                series.setdefault(k.removeprefix("eval/"), []).append((r["step"], float(v)))
    for k, v in (extra or {}).items():
        series[k] = v
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        a.plot(*zip(*train), lw=1)
    a.set(xlabel="step", ylabel="training loss (per answer token)", title="training loss")
    for name, pts in sorted(series.items()):
        b.plot(*zip(*sorted(pts)), marker="o", label=name)
    b.axhline(0.5, color="grey", ls=":", lw=1)
    b.set(xlabel="step", ylabel="accuracy", title="in-training evaluation", ylim=(0, 1))
    if series:
        b.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m activation_oracles.evals.learning_curve", description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    print(plot(args.run_dir, args.out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
