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
from collections.abc import Mapping, Sequence
from pathlib import Path
from random import Random
from typing import Any

import torch

from activation_oracles.errors import ConfigError, OrganismError

from .audit_task import AuditItem, AuditTask, get_audit_task
from .external import detach_external_after
from .organism import Organism, attach_organism, build_organism
from .report import prepare_out_dir, write_report

MODES = ("full", "segment", "token")
SEGMENT = 10  # positions in the "segment" mode (the reference's last-10-token segment)


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------

def derange_by_truth(truths: Sequence[str], rng: Random) -> list[int]:
    """For each index another index, preferring one whose truth differs (a shuffled-activations control)."""
    n = len(truths)
    if n < 2:
        return list(range(n))
    out = []
    for i, t in enumerate(truths):
        others = [j for j in range(n) if j != i and truths[j] != t] or [j for j in range(n) if j != i]
        out.append(others[rng.randrange(len(others))])
    return out


def mode_view(acts: Any, mode: str, token_position: int) -> Any:
    """The part of ``acts`` an oracle reads in ``mode``: all of it (full), the last tokens (segment) or one token."""
    if mode == "full":
        return acts
    if mode == "segment":
        return acts.last(min(SEGMENT, len(acts.positions)))
    return acts.token(token_position)


def _row(item: AuditItem, method: str, mode: str, kind: str, correct: bool, answer: str,
         p_truth: float | None = None) -> dict[str, Any]:
    return {"id": item.id, "organism": item.organism, "method": method, "mode": mode, "kind": kind,
            "correct": bool(correct), "truth": item.truth, "answer": answer,
            "p_truth": None if p_truth is None else float(p_truth)}


class _Targets:
    """Organisms (or the bare base, key ``""``) sharing the oracle's base weights."""

    def __init__(self, organisms: Mapping[str, Any], base: Any) -> None:
        self.organisms = dict(organisms)
        self.base = base

    def adapter(self, key: str) -> str | None:
        org = self.organisms.get(key)
        return org.adapter if isinstance(org, Organism) else None

    def capture(self, items: Sequence[AuditItem], layers: Sequence[int], batch_size: int) -> list[Any]:
        """Activations of every item's prompt under its own target, in item order."""
        from activation_oracles.capturing import capture

        from .chat import running

        out: list[Any] = [None] * len(items)
        by_target: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            by_target.setdefault(it.organism, []).append(i)
        for key, idx in by_target.items():
            # chats go through the chat template with the assistant header open; plain strings
            # (classification texts) are read as the text's own tokens, as the trainer reads them
            for is_chat in (True, False):
                sub = [i for i in idx if isinstance(items[i].prompt, str) != is_chat]
                if not sub:
                    continue
                with running(self.base, self.adapter(key)):
                    acts = capture(self.base, [items[i].prompt for i in sub], layers=list(layers),
                                   batch_size=batch_size, chat=is_chat)
                for i, a in zip(sub, acts if isinstance(acts, list) else [acts]):
                    out[i] = a
        return out


# ------------------------------------------------------------------------------------------------------
# the methods
# ------------------------------------------------------------------------------------------------------

def _has_open(task: AuditTask, items: Sequence[AuditItem]) -> bool:
    return bool(task.open_question or any(i.open_question for i in items))


def _oracle_units(task: AuditTask, items: Sequence[AuditItem]) -> int:
    """Progress units of :func:`_oracle_rows`: per mode, one per open answer and one per forced choice."""
    return len(MODES) * len(items) * (2 if _has_open(task, items) else 1)


def _oracle_rows(task: AuditTask, oracle: Any, method: str, items: Sequence[AuditItem], acts: Sequence[Any],
                 *, max_new_tokens: int, batch_size: int, bar: Any = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    tick = bar.update if bar is not None else (lambda _n: None)
    for mode in MODES:
        views = [mode_view(a, mode, task.token_position) for a in acts]
        if _has_open(task, items):
            questions = [i.open_question or task.open_question for i in items]
            answers: list[str] = []
            for start in range(0, len(items), batch_size):  # batch by batch, for the bar (same batches ask makes)
                answers += oracle.ask(views[start:start + batch_size], questions[start:start + batch_size],
                                      max_new_tokens=max_new_tokens, batch_size=batch_size)
                tick(min(batch_size, len(items) - start))
            rows += [_row(it, method, mode, "open", task.score_open(ans, it), ans) for it, ans in zip(items, answers)]
        # forced choice, grouped by candidate set (choose takes one set per call)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(tuple(it.candidates), []).append(i)
        for cands, group in groups.items():
            for start in range(0, len(group), batch_size):
                idx = group[start:start + batch_size]
                qs = [items[i].choice_question or task.choice_question for i in idx]
                probs = oracle.choose([views[i] for i in idx], qs, list(cands), batch_size=batch_size * 2)
                for i, p in zip(idx, probs):
                    best = max(p, key=p.get)
                    rows.append(_row(items[i], method, mode, "choice", best == items[i].truth, best,
                                     p[items[i].truth]))
                tick(len(idx))
    return rows


def _blackbox_units(task: AuditTask, items: Sequence[AuditItem]) -> int:
    """Progress units of :func:`_blackbox_rows`: one per reply, one more per prefilled forced choice."""
    return sum(1 + bool(q.prefill) for it in items for q in task.blackbox(it))


def _blackbox_rows(task: AuditTask, targets: _Targets, items: Sequence[AuditItem], *, max_new_tokens: int,
                   batch_size: int, bar: Any = None) -> list[dict[str, Any]]:
    from .chat import answer_logprobs, generate

    rows: list[dict[str, Any]] = []
    tick = bar.update if bar is not None else (lambda _n: None)
    queries = [(it, q) for it in items for q in task.blackbox(it)]
    by_key: dict[tuple[str, str, str], list[tuple[AuditItem, Any]]] = {}
    for it, q in queries:
        by_key.setdefault((it.organism, q.method, q.prefill), []).append((it, q))
    for (key, method, prefill), group in by_key.items():
        adapter = targets.adapter(key)
        replies = generate(targets.base, [q.chat for _, q in group], adapter=adapter, prefill=prefill,
                           max_new_tokens=max_new_tokens, batch_size=batch_size)
        for (it, _), reply in zip(group, replies):
            text = f"{prefill} {reply}".strip()
            rows.append(_row(it, method, "-", "open", task.score_open(text, it), text))
        tick(len(group))
        if not prefill:
            continue
        # forced choice after the prefill: the target's own likelihood of each candidate
        for it, q in group:
            cands = list(it.candidates)
            spelled = list(it.meta.get("prefill_candidates") or
                           [c if prefill.endswith((" ", "\n")) else f" {c}" for c in cands])
            scores = answer_logprobs(targets.base, [q.chat] * len(cands), spelled, adapter=adapter, prefill=prefill,
                                     end_of_turn=False, batch_size=batch_size)
            p = torch.softmax(torch.tensor(scores), dim=0).tolist()
            best = cands[max(range(len(cands)), key=lambda j: scores[j])]
            rows.append(_row(it, method, "-", "choice", best == it.truth, best, p[cands.index(it.truth)]))
            tick(1)
    return rows


def _lens_and_probe_rows(task: AuditTask, targets: _Targets, items: Sequence[AuditItem], read_layer: int, *,
                         batch_size: int, notes: list[str], extra: dict[str, Any],
                         bar: Any = None) -> list[dict[str, Any]]:
    """Logit lens (all layers) and linear probe (read layer) from one capture pass per batch of items."""
    from .baselines import candidate_token_ids, fit_probe, logit_lens_scores, pick_layer

    model = targets.base
    layers = list(range(model.n_layers))
    lens: dict[str, list[torch.Tensor]] = {m: [] for m in MODES}   # per item: [n_layers, n_cands]
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in MODES}  # per item: [d_model]
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        acts = targets.capture(chunk, layers if task.logit_lens else [read_layer], batch_size)
        for it, a in zip(chunk, acts):
            full = None
            if task.logit_lens:  # [n_layers, n_positions, n_cands], computed once for all modes
                ids = candidate_token_ids(model.tokenizer, it.candidates)
                full = logit_lens_scores(model, {k: a.vectors_for(k) for k in layers}, ids)
            for mode in MODES:
                view = mode_view(a, mode, task.token_position)
                feats[mode].append(view.vectors_for(read_layer).float().mean(dim=0))
                if full is not None:
                    cols = [a.positions.index(p) for p in view.positions]
                    lens[mode].append(full[:, cols].mean(dim=1))  # mean over the mode's positions
        if bar is not None:
            bar.update(len(chunk))
    rows: list[dict[str, Any]] = []
    val = [i for i, it in enumerate(items) if it.split == "val"]
    test = [i for i, it in enumerate(items) if it.split == "test"]
    if task.logit_lens:
        if not val:
            notes.append("logit lens skipped: no validation items to pick its layer.")
        else:
            chosen = {}
            for mode in MODES:
                layer, _ = pick_layer([lens[mode][i] for i in val], [items[i].candidates.index(items[i].truth)
                                                                     for i in val])
                chosen[mode] = layer
                for i in test:
                    s = lens[mode][i][layer]
                    p = torch.softmax(s, dim=0)
                    best = items[i].candidates[int(s.argmax())]
                    t_idx = items[i].candidates.index(items[i].truth)
                    rows.append(_row(items[i], "logit_lens", mode, "choice", best == items[i].truth, best,
                                     float(p[t_idx])))
            extra["logit_lens_layers"] = chosen
    if task.probe:
        # one probe per group (e.g. per classification task); label = meta["probe_label"] or the truth
        def label(i: int) -> str:
            return str(items[i].meta.get("probe_label", items[i].truth))

        groups = sorted({str(items[i].meta.get("probe_group", "")) for i in range(len(items))})
        fitted = []
        for g in groups:
            gv = [i for i in val if str(items[i].meta.get("probe_group", "")) == g]
            gt = [i for i in test if str(items[i].meta.get("probe_group", "")) == g]
            classes = sorted({label(i) for i in gv})
            if len(classes) < 2:
                notes.append(f"probe skipped{' for ' + g if g else ''}: the validation items hold "
                             f"{len(classes)} class(es); a probe needs two.")
                continue
            fitted.append(g)
            for mode in MODES:
                probe = fit_probe(torch.stack([feats[mode][i] for i in gv]), [label(i) for i in gv])
                preds = probe.predict(torch.stack([feats[mode][i] for i in gt])) if gt else []
                for i, pred in zip(gt, preds):
                    rows.append(_row(items[i], "probe", mode, "choice", pred == label(i), pred))
        extra["probe_groups"] = fitted
    return rows


# ------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------

ALL_METHODS = ("oracle", "oracle:shuffled", "oracle:coeff0", "untrained_oracle", "blackbox", "logit_lens", "probe")


def _load_targets(task: AuditTask, targets: Sequence[Any] | None, oracle: Any, base_spec: str,
                  data_dir: Path | None, progress: bool) -> dict[str, Any]:
    if task.organism_task is None:
        if targets:
            raise ConfigError(f"audit {task.name!r} reads the base model itself and takes no --target; got {targets}.")
        return {"": oracle.model}
    specs: list[Any] = list(targets) if targets else [
        build_organism(task.organism_task, base=base_spec, options=opts, data_dir=data_dir, progress=progress)
        for opts in task.default_targets()]
    from .external import ExternalOrganism, load_external_organism

    out: dict[str, Any] = {}
    for spec in specs:
        if isinstance(spec, ExternalOrganism):  # a LoRA made elsewhere plus its secret: no card to read
            org = load_external_organism(spec, task, oracle.model)
        else:
            org = attach_organism(spec, oracle.model, base_name=oracle.config.base_model, what="the oracle")
        if org.name in out:
            raise ConfigError(f"two targets of the {task.name!r} audit are both named {org.name!r}; audit them "
                              "separately, or name an external one (ExternalOrganism(..., name=...)).")
        if org.card.get("task") != task.organism_task:
            raise OrganismError(f"organism {org.name!r} is a {org.card.get('task')!r} organism; the {task.name!r} "
                                f"audit needs a {task.organism_task!r} one (ao organism build {task.organism_task}).")
        out[org.name] = org
    return out


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
    organisms = _load_targets(t, targets, orc, base_spec, data_path, progress)
    tg = _Targets(organisms, orc.model)
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
    n_oracle = _oracle_units(t, test)
    if "oracle" in methods:
        timed("oracle", n_oracle, lambda bar: _oracle_rows(t, orc, "oracle", test, acts, bar=bar, **kw))
    if "oracle:shuffled" in methods:
        perm = derange_by_truth([it.truth for it in test], Random(seed + 1))
        timed("oracle:shuffled", n_oracle, lambda bar: _oracle_rows(t, orc, "oracle:shuffled", test,
                                                                    [acts[j] for j in perm], bar=bar, **kw))
    if "oracle:coeff0" in methods:
        timed("oracle:coeff0", n_oracle, lambda bar: _oracle_rows(t, orc.with_config(coeff=0.0), "oracle:coeff0",
                                                                  test, acts, bar=bar, **kw))
    if "untrained_oracle" in methods:
        untrained = orc.as_untrained()
        timed("untrained_oracle", n_oracle, lambda bar: _oracle_rows(t, untrained, "untrained_oracle", test, acts,
                                                                     bar=bar, **kw))
    if "blackbox" in methods:
        timed("blackbox", _blackbox_units(t, test),
              lambda bar: _blackbox_rows(t, tg, test, max_new_tokens=max(24, max_new_tokens), batch_size=batch_size,
                                         bar=bar))
    if "logit_lens" in methods or "probe" in methods:
        want = [m for m in ("logit_lens", "probe") if m in methods]
        timed("+".join(want), len(items),
              lambda bar: [r for r in _lens_and_probe_rows(t, tg, items, read_layer, batch_size=batch_size,
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
