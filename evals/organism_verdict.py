"""Does an organism hold what it should before it is audited? Pass conditions on its behaviour checks.

An audit of an organism that has no secret measures nothing, so each organism family states, next to
its behaviour checks, the figures an organism must reach (:class:`Criterion`); :func:`verdict` judges a
card's checks against them:

- ``pass``: every criterion was measured and met;
- ``fail``: one was measured and missed;
- ``unchecked``: the checks were not run (``checks=False``), a figure is missing (e.g. a check that
  needs the shared data folder was skipped) or the family states no criteria;
- ``control``: a control variant (``variant=control``): it is meant to hold nothing.

The audit suite refuses ``fail`` and ``unchecked`` organisms unless told to audit them anyway
(:func:`require_fit`). The criteria are code, so a card written before them is judged from its
recorded checks.

>>> c = Criterion("ranks its word first", ("internalisation", "organism", "accuracy"), ">=", 0.5)
>>> c.judge({"internalisation": {"organism": {"accuracy": 0.6}}})["passed"]
True
>>> verdict((c,), {"internalisation": {"organism": {"accuracy": 0.1}}})["status"]
'fail'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from activation_oracles.errors import OrganismCheckError

STATUSES = ("pass", "fail", "unchecked", "control")


@dataclass(frozen=True)
class Criterion:
    """One pass condition: the figure at ``path`` in the checks, compared with ``threshold`` by ``op``.

    With ``ratio_to`` the figure is ``checks[path] / checks[ratio_to]`` (e.g. the organism's probability
    of a trait over the base model's).
    """

    what: str
    path: tuple[str, ...]
    op: str
    threshold: float
    ratio_to: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"Criterion.op={self.op!r}; expected '>=' or '<='.")

    def measure(self, checks: Mapping[str, Any]) -> float | None:
        value = _at(checks, self.path)
        if value is None or self.ratio_to is None:
            return value
        ref = _at(checks, self.ratio_to)
        if ref is None:
            return None
        return value / ref if ref > 0 else (float("inf") if value > 0 else 0.0)

    def judge(self, checks: Mapping[str, Any]) -> dict[str, Any]:
        """``{what, figure, op, threshold, measured, passed}`` (``passed`` ``None`` when not measured)."""
        m = self.measure(checks)
        figure = ".".join(self.path) + (f" / {'.'.join(self.ratio_to)}" if self.ratio_to else "")
        passed = None if m is None else (m >= self.threshold if self.op == ">=" else m <= self.threshold)
        return {"what": self.what, "figure": figure, "op": self.op, "threshold": self.threshold, "measured": m,
                "passed": passed}


def _at(checks: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = checks
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def verdict(criteria: Sequence[Criterion] | None, checks: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{status, criteria: [judged rows], reason}`` of ``checks`` under ``criteria`` (``None``: a control)."""
    if criteria is None:
        return {"status": "control", "criteria": [], "reason": "a control variant: it is meant to hold nothing"}
    if not criteria:
        return {"status": "unchecked", "criteria": [], "reason": "this organism family states no pass criteria"}
    if not checks:
        return {"status": "unchecked", "criteria": [c.judge({}) for c in criteria],
                "reason": "the behaviour checks were not run (built with checks=False / --no-checks)"}
    rows = [c.judge(checks) for c in criteria]
    missed = [r for r in rows if r["passed"] is False]
    unmeasured = [r for r in rows if r["passed"] is None]
    if missed:
        return {"status": "fail", "criteria": rows,
                "reason": "; ".join(f"{r['what']}: {_num(r['measured'])}, needs {r['op']} {_num(r['threshold'])}"
                                    for r in missed)}
    if unmeasured:
        skipped = checks.get("skipped")
        return {"status": "unchecked", "criteria": rows,
                "reason": "not measured: " + ", ".join(r["what"] for r in unmeasured) +
                          (f" ({skipped})" if skipped else "")}
    return {"status": "pass", "criteria": rows, "reason": "every criterion met"}


def card_verdict(card: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of an organism card (``organism.json``), judged with its task's criteria now."""
    from .organism import get_organism_task

    task = get_organism_task(str(card.get("task", "")))
    return verdict(task.criteria(card.get("options") or {}), card.get("checks"))


def pair_verdict(organism: Mapping[str, Any], control: Mapping[str, Any]) -> dict[str, Any] | None:
    """The verdict of an organism against its control (cards of one task, variants organism and control), or
    ``None`` when the task states no pair criteria. The criteria read ``{"organism": checks, "control": checks}``."""
    from .organism import get_organism_task

    task = get_organism_task(str(organism.get("task", "")))
    criteria = task.pair_criteria(organism.get("options") or {})
    if not criteria:
        return None
    checks = {"organism": organism.get("checks") or {}, "control": control.get("checks") or {}}
    v = verdict(criteria, checks if checks["organism"] and checks["control"] else {})
    return {**v, "name": f"{organism.get('name', '?')} against {control.get('name', '?')}"}


def require_fit(card: Mapping[str, Any], *, allow: bool = False, control: Mapping[str, Any] | None = None
                ) -> dict[str, Any]:
    """The card's verdict (with ``control``: the organism's verdict against that control's card);
    raise :class:`OrganismCheckError` for ``fail``/``unchecked`` unless ``allow``."""
    v = card_verdict(card)
    if control is not None and v["status"] == "pass":
        paired = pair_verdict(card, control)
        if paired is not None:
            v = paired
    if v["status"] in ("fail", "unchecked") and not allow:
        fix = ("rebuild it with its checks (ao organism build, without --no-checks, with --data-dir)"
               if v["status"] == "unchecked" else
               "tune its recipe until it passes (ao organism build ... --set steps=N --set lr=X; see its README.md)")
        raise OrganismCheckError(
            f"organism {card.get('name', '?')!r} {'failed' if v['status'] == 'fail' else 'has not passed'} its "
            f"behaviour check ({v['reason']}): an audit of an organism that does not hold its secret measures "
            f"nothing. Either {fix}, or audit it anyway with allow_failing_organisms=True "
            "(--allow-failing-organisms).")
    return v


def verdict_markdown(v: Mapping[str, Any]) -> str:
    """The verdict as a Markdown section (status line and one row per criterion)."""
    lines = [f"**Verdict: {v['status']}** ({v['reason']}).", ""]
    if v["criteria"]:
        lines += ["| criterion | figure | needs | measured | met |", "|---|---|---|---:|---|"]
        for r in v["criteria"]:
            met = {True: "yes", False: "no", None: "not measured"}[r["passed"]]
            lines.append(f"| {r['what']} | `{r['figure']}` | {r['op']} {_num(r['threshold'])} | "
                         f"{_num(r['measured'])} | {met} |")
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


__all__ = ["STATUSES", "Criterion", "OrganismCheckError", "card_verdict", "pair_verdict", "require_fit", "verdict",
           "verdict_markdown"]
