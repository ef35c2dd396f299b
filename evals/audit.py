"""Run an audit: every method on the same items, one row per (item, method, input mode, kind).

Methods (rows' ``method`` field):

- ``oracle``: the activation oracle on the target's activations: an open answer to
  the task's open question (scored by the task's rule) and a forced choice among the
  candidates (``choose``), on three input modes: ``full`` (every position of the
  prompt), ``segment`` (the last 10 positions) and ``token`` (one position).
- ``oracle:shuffled``: the same oracle reading another test item's activations (one with a
  different truth where possible): what the question alone, plus *some* activations, gives.
- ``oracle:coeff0``: the same oracle with ``coeff=0``: no activation information at all.
- ``untrained_oracle``: the base model with the same injection (Patchscopes-style).
- ``blackbox:direct`` / ``blackbox:prefill``: asking the target itself, plainly and with a
  forced start of its reply; with a prefill the candidates are also ranked by the target's
  likelihood (a strong black-box forced choice).
- ``logit_lens``: candidates ranked by the logit lens, layer picked on the validation items.
- ``probe``: a linear probe fitted on the validation items' activations.

Only test items are scored. Everything is deterministic given the seed (greedy decoding).
The methods' rows are made in :mod:`~activation_oracles.evals.audit_methods` and the targets
loaded in :mod:`~activation_oracles.evals.audit_targets`; this module runs them in turn and
writes the report (``MODES``, ``mode_view`` and ``derange_by_truth`` are importable from here).

>>> from activation_oracles.evals.audit import MODES, derange_by_truth
>>> MODES
('full', 'segment', 'token')
>>> from random import Random
>>> derange_by_truth(["a", "a", "b", "b"], Random(0))  # each index gets another with a different truth
[3, 3, 0, 1]
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from random import Random
from typing import Any

from activation_oracles.errors import ConfigError

from .audit_methods import (MODES, SEGMENT, blackbox_rows, blackbox_units, derange_by_truth, lens_and_probe_rows,
                            mode_view, oracle_rows, oracle_units)
from .audit_targets import Targets, load_targets
from .audit_task import get_audit_task
from .external import detach_external_after
from .organism import Organism
from .report import prepare_out_dir, write_report

ALL_METHODS = ("oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle", "blackbox", "logit_lens", "probe")


@detach_external_after  # external organisms' adapters live for the run only
def run_audit(task: str, *, oracle: Any = "smollm2-135m", targets: Sequence[Any] | None = None,
              out: str | os.PathLike[str] | None = None, limit: int | None = 40, seed: int = 0,
              data_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
              methods: Sequence[str] = ALL_METHODS, max_new_tokens: int = 12, batch_size: int = 16,
              progress: bool = False, oracle_label: str | None = None) -> dict[str, Any]:
    """Run one audit and (with ``out``) write ``results.json``, ``report.md`` and plots there.

    Args:
        task: an audit name (``audit_tasks()``): taboo, gender, ssc, personaqa, classification, backdoor,
            subliminal.
        oracle: an oracle spec for ``ao.load_oracle`` or a loaded ``ActivationOracle``; organisms are
            attached to its base model (shared weights).
        targets: organism folders (or loaded organisms) to audit, and/or
            :class:`~activation_oracles.evals.external.ExternalOrganism` (a LoRA adapter made elsewhere,
            folder or hub id, plus its secret); default: the task's default organisms, built (or found in
            the cache) on the oracle's base model. External adapters are attached for the run only.
        out: the report folder (refused if it holds another audit's results, unless ``overwrite``).
        limit: test items per target (``None``: all).
        seed: sampling seed; the same seed gives the same rows.
        data_dir: the shared data folder (default ``$AO_DATA_DIR``).
        methods: a subset of :data:`ALL_METHODS`.
        progress: a bar with an ETA per method over its items, on stderr when it is a terminal (and the
            organism builds' bars); off by default, ``ao audit`` turns it on.
        oracle_label: how the oracle is named in the report (default: its spec, or its base model's name).

    Returns:
        The results dict (what ``results.json`` holds).
    """
    t = get_audit_task(task)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit}; expected a positive number of test items per target (or None for all).")
    bad = sorted(set(methods) - set(ALL_METHODS))
    if bad:
        raise ConfigError(f"unknown method(s) {bad}; valid methods are: {', '.join(ALL_METHODS)}.")
    if data_dir is None and os.environ.get("AO_DATA_DIR"):
        data_dir = os.environ["AO_DATA_DIR"]
    data_path = Path(data_dir) if data_dir else None
    out_path = prepare_out_dir(out, task=t.name, overwrite=overwrite) if out is not None else None

    from activation_oracles.loading import load_oracle
    from activation_oracles.oracle import ActivationOracle

    t0 = time.perf_counter()
    orc = oracle if isinstance(oracle, ActivationOracle) else load_oracle(oracle)
    base_spec = orc.config.base_model
    organisms = load_targets(t, targets, orc, base_spec, data_path, progress)
    tg = Targets(organisms, orc.model)
    items = t.items(organisms, data_dir=data_path, rng=Random(seed), limit=limit)
    if not items:
        raise ConfigError(f"audit {t.name!r} produced no items (data_dir={str(data_path)!r}); check the data folder.")
    test = [it for it in items if it.split == "test"]
    read_layer = orc.model.layer_at(50)
    notes: list[str] = []
    extra: dict[str, Any] = {"read_layer": read_layer, "n_items": {"val": len(items) - len(test), "test": len(test)},
                             "targets": {k: (None if not isinstance(o, Organism) else {"path_name": o.path.name, "card": {
                                 kk: o.card.get(kk) for kk in ("task", "options", "recipe_hash", "checks")}})
                                 for k, o in organisms.items()}}
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}

    def timed(name: str, units: int, fn: Any) -> None:
        """Run one method with a bar over its items (``progress``), and record its wall time."""
        from activation_oracles.progress import progress as progress_bar

        s = time.perf_counter()
        with progress_bar(desc=f"{t.name} {name}", total=units, unit="item", enabled=progress, leave=None) as bar:
            rows.extend(fn(bar))
        timings[name] = round(time.perf_counter() - s, 1)

    acts = tg.capture(test, [read_layer], batch_size)
    kw = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    n_oracle = oracle_units(t, test)
    if "oracle" in methods:
        timed("oracle", n_oracle, lambda bar: oracle_rows(t, orc, "oracle", test, acts, bar=bar, **kw))
    if "oracle:shuffled" in methods:
        perm = derange_by_truth([it.truth for it in test], Random(seed + 1))
        timed("oracle:shuffled", n_oracle, lambda bar: oracle_rows(t, orc, "oracle:shuffled", test,
                                                                   [acts[j] for j in perm], bar=bar, **kw))
    if "oracle:coeff0" in methods:
        timed("oracle:coeff0", n_oracle, lambda bar: oracle_rows(t, orc.with_config(coeff=0.0), "oracle:coeff0",
                                                                 test, acts, bar=bar, **kw))
    if "untrained_oracle" in methods:
        untrained = orc.as_untrained()
        timed("untrained_oracle", n_oracle, lambda bar: oracle_rows(t, untrained, "untrained_oracle", test, acts,
                                                                    bar=bar, **kw))
    if "blackbox" in methods:
        timed("blackbox", blackbox_units(t, test),
              lambda bar: blackbox_rows(t, tg, test, max_new_tokens=max(24, max_new_tokens), batch_size=batch_size,
                                        bar=bar))
    if "logit_lens" in methods or "probe" in methods:
        want = [m for m in ("logit_lens", "probe") if m in methods]
        timed("+".join(want), len(items),
              lambda bar: [r for r in lens_and_probe_rows(t, tg, items, read_layer, batch_size=batch_size,
                                                          notes=notes, extra=extra, bar=bar)
                           if r["method"] in want])
    extra["timings_s"] = timings
    extra["wall_s"] = round(time.perf_counter() - t0, 1)
    config = {"task": t.name, "oracle": oracle_label or (str(oracle) if not isinstance(oracle, ActivationOracle) else
                                                         f"<{orc.config.base_model} oracle>"), "targets": sorted(organisms), "limit": limit, "seed": seed,
              "methods": list(methods), "segment_positions": SEGMENT, "token_position": t.token_position,
              "read_layer": read_layer, "max_new_tokens": max_new_tokens}
    chance = t.chance(items)
    results = {"task": t.name, "config": config, "chance": chance, "rows": rows, "notes": notes, "extra": extra}
    if out_path is not None:
        write_report(out_path, task=t.name, config=config, rows=rows, chance=chance, notes=notes, extra=extra)
        from .report import load_results

        return load_results(out_path / "results.json")
    from .report import aggregate

    results["aggregates"] = aggregate(rows, chance)
    return results


__all__ = ["ALL_METHODS", "MODES", "SEGMENT", "derange_by_truth", "mode_view", "run_audit"]
