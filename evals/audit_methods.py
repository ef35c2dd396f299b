"""The audit's methods: each turns the test items into result rows (one per item, method, input mode, kind).

The oracle and its controls (:func:`oracle_rows`: open answer and forced choice on the
``full``/``segment``/``token`` views of the activations), asking the target itself
(:func:`blackbox_rows`), and the logit lens and linear probe fitted on the validation items
(:func:`lens_and_probe_rows`); the ``*_units`` functions size each method's progress bar.
:func:`~activation_oracles.evals.audit.run_audit` calls them in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import Any

import torch

from .audit_targets import Targets
from .audit_task import AuditItem, AuditTask

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


# ------------------------------------------------------------------------------------------------------
# the methods
# ------------------------------------------------------------------------------------------------------

def _has_open(task: AuditTask, items: Sequence[AuditItem]) -> bool:
    return bool(task.open_question or any(i.open_question for i in items))


def oracle_units(task: AuditTask, items: Sequence[AuditItem]) -> int:
    """Progress units of :func:`oracle_rows`: per mode, one per open answer and one per forced choice."""
    return len(MODES) * len(items) * (2 if _has_open(task, items) else 1)


def oracle_rows(task: AuditTask, oracle: Any, method: str, items: Sequence[AuditItem], acts: Sequence[Any],
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


def blackbox_units(task: AuditTask, items: Sequence[AuditItem]) -> int:
    """Progress units of :func:`blackbox_rows`: one per reply, one more per prefilled forced choice."""
    return sum(1 + bool(q.prefill) for it in items for q in task.blackbox(it))


def blackbox_rows(task: AuditTask, targets: Targets, items: Sequence[AuditItem], *, max_new_tokens: int,
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


def lens_and_probe_rows(task: AuditTask, targets: Targets, items: Sequence[AuditItem], read_layer: int, *,
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


__all__ = ["MODES", "SEGMENT", "blackbox_rows", "blackbox_units", "derange_by_truth", "lens_and_probe_rows",
           "mode_view", "oracle_rows", "oracle_units"]
