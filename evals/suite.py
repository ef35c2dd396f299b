"""``ao audit suite``: every audit on its default organisms, one combined report.

The oracle is loaded once and every organism is attached to its base model (one
copy of the weights). Each task writes its own folder (``OUT/<task>/``); the
suite writes ``OUT/report.md`` and ``OUT/suite.json`` with the combined table, and,
with ``evals_md``, the table plus the command that made it (EVALS.md).

Two kinds of entry: the audits of :data:`SUITE_TASKS` (one accuracy table, the format of
:mod:`activation_oracles.evals.report`) and the AUROC/MC evaluations of
:data:`SUITE_EXTRAS`: model diffing of each misalignment organism against its control
(:data:`DIFFING_TASKS`), the TruthfulQA oracle audit, and TruthfulQA MC1/MC2 of the base
model and of every organism the suite used. ``limit`` is test items per organism for the
audits, prompts per model for diffing, and questions for the two TruthfulQA entries.

>>> from activation_oracles.evals.suite import SUITE_EXTRAS, SUITE_TASKS
>>> SUITE_TASKS
('taboo', 'gender', 'ssc', 'personaqa', 'classification', 'backdoor', 'subliminal')
>>> SUITE_EXTRAS
('diffing', 'truthfulqa', 'truthfulqa-mc')
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from activation_oracles.errors import OutputDirError, UnknownTaskError

SUITE_TASKS = ("taboo", "gender", "ssc", "personaqa", "classification", "backdoor", "subliminal")
SUITE_EXTRAS = ("diffing", "truthfulqa", "truthfulqa-mc")
# organism tasks whose organism/control pair the diffing entry compares
DIFFING_TASKS = ("em-narrow-advice", "em-reward-hacks", "trigger-backdoor", "subliminal")


SETTINGS_FILE = "suite_settings.json"
"""Written when a suite starts: what a resumed suite must match."""
CARDS_DIR = "organisms"
"""``OUT/organisms/<name>.json``: the card of every organism the suite judged (its checks and recipe), so a
suite resumed where the organism cache is gone judges its finished entries' organisms without rebuilding them."""
TIMINGS_FILE = "timings.json"
"""``OUT/timings.json``: each entry's wall time (its organism builds included) on the run that made it, with the
date and machine; a resumed suite keeps the times of the entries it reuses, so their sum is the suite's cost."""


def _machine() -> dict[str, Any]:
    import torch

    return {"machine": platform.processor() or platform.machine(), "system": platform.system(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def timings_markdown(timings: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per timed entry and their sum (the whole suite's wall time, however many runs it took).

    >>> print(timings_markdown({"gender": {"wall_s": 1440.0, "date": "2026-12-06", "cpu_count": 2}}))
    Wall time per entry (organism builds included; each on the run that made it): gender 24.0 min (2026-12-06, 2 CPU cores); all timed entries 24.0 min.
    """
    if not timings:
        return ""
    parts = [f"{k} {v['wall_s'] / 60:.1f} min ({v.get('date', '?')}, {v.get('cpu_count', '?')} CPU cores)"
             for k, v in timings.items()]
    total = sum(float(v["wall_s"]) for v in timings.values())
    return ("Wall time per entry (organism builds included; each on the run that made it): " + "; ".join(parts) +
            f"; all timed entries {total / 60:.1f} min.")


def _matching_results(folder: Path, want: Mapping[str, Any]) -> dict[str, Any] | None:
    """The results in ``folder`` if their config holds every ``want`` setting, else None."""
    if want.get("oracle") is None and "oracle" in want:
        return None  # a loaded oracle has no spec to compare
    path = folder / "results.json"
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # unreadable: run it again
        return None
    c = res.get("config", {})
    same = all(json.dumps(c.get(k)) == json.dumps(v) for k, v in want.items())
    return res if same else None


def _pair_options(task: str) -> list[dict[str, Any]]:
    from .subliminal import DEFAULT_TRAIT

    extra = {"trait": DEFAULT_TRAIT} if task == "subliminal" else {}
    return [{**extra, "variant": v} for v in ("organism", "control")]


def _benign_twin(task: str, base: str, data_dir: Any, progress: bool, build: bool = True) -> Path:
    """A second control of ``task``: same recipe and data volume, another seed (the diffing audit's benign twin).

    Its folder is the control's name with ``-twin`` (beside the control's in the cache; the card name stays
    the control's, and the adapter names differ by the adapters' hashes). ``build=False``: only its folder."""
    from .organism import build_organism, get_organism_task, organism_dir

    t = get_organism_task(task)
    options = _pair_options(task)[1]
    recipe = t.recipe.with_overrides({"seed": t.recipe.seed + 1})
    control = t.display_name(t.parse_options(options))
    out = organism_dir(task, base=base, options=options, recipe=recipe).with_name(f"{control}-twin")
    if not build:
        return out
    return build_organism(task, base=base, options=options, recipe=recipe, data_dir=data_dir, progress=progress,
                          out=out)


def _demote(md: str) -> str:
    """A report's Markdown with its headings one level down (it becomes a section of the suite's)."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.splitlines()) + "\n"


def run_suite(out: str | os.PathLike[str], *, oracle: Any = "smollm2-135m", limit: int | None = 40, seed: int = 0,
              data_dir: str | os.PathLike[str] | None = None, overwrite: bool = False,
              tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
              evals_md: str | os.PathLike[str] | None = None, progress: bool = False,
              command: str | None = None, task_limits: dict[str, int] | None = None,
              allow_failing_organisms: bool = False) -> dict[str, Any]:
    """Run the entries in ``tasks`` (default: :data:`SUITE_TASKS` then :data:`SUITE_EXTRAS`) and combine them.

    ``task_limits`` overrides ``limit`` for some entries (e.g. ``{"taboo": 4, "truthfulqa-mc": 100}``).
    ``progress``: a bar over the entries and, inside it, each entry's own bars (methods, organism builds),
    on stderr when it is a terminal; off by default, ``ao audit suite`` turns it on.
    An entry's earlier results in ``OUT/<entry>/`` are reused when they were made with the same
    settings (oracle spec, limit, seed, methods; the organism pair / list for the extras), and their organisms are
    judged by the cards saved in ``OUT/organisms/`` without being rebuilt (a results folder carried to a machine
    whose organism cache is empty resumes without retraining what its finished entries used).
    Every organism must pass its behaviour check first (:mod:`.organism_verdict`; controls excepted):
    one that fails or was never checked raises :class:`~activation_oracles.errors.OrganismCheckError`
    before it is audited, unless ``allow_failing_organisms`` (then its verdict is in the report).
    """
    from activation_oracles.loading import load_oracle
    from activation_oracles.oracle import ActivationOracle
    from activation_oracles.progress import progress as progress_bar

    from .audit import ALL_METHODS, run_audit
    from .audit_task import get_audit_task
    from .organism import build_organism, get_organism_task, organism_dir, read_card
    from .organism_verdict import require_fit
    from .report import combined_markdown

    names = list(tasks or (*SUITE_TASKS, *SUITE_EXTRAS))
    for n in names:
        if n not in SUITE_EXTRAS:
            try:
                get_audit_task(n)  # unknown names fail before any work
            except UnknownTaskError as err:
                raise UnknownTaskError(f"{err} Suite-only entries: {', '.join(SUITE_EXTRAS)}.") from None
    unknown_limits = sorted(set(task_limits or {}) - set(names))
    if unknown_limits:
        raise UnknownTaskError(f"task limit(s) for {unknown_limits}, which this suite does not run; its entries "
                               f"are: {', '.join(names)}.")
    root = Path(out)
    if (root / "suite.json").exists() and not overwrite:
        raise OutputDirError(f"{str(root)!r} already holds a suite's results; pass --overwrite or another --out.")
    label = oracle if isinstance(oracle, str) else None
    want_methods = list(methods or ALL_METHODS)
    # A suite killed part-way continues where it stopped (finished entries are reused); only with the
    # settings it was started with, so one folder never mixes two suites.
    settings = {"oracle": label, "limit": limit, "seed": seed, "methods": want_methods, "tasks": names,
                "task_limits": dict(sorted((task_limits or {}).items()))}
    started = root / SETTINGS_FILE
    if started.is_file() and not overwrite:
        try:
            before = json.loads(started.read_text())
        except (OSError, json.JSONDecodeError):
            before = {}
        differ = [k for k in settings if json.dumps(before.get(k)) != json.dumps(settings[k])]
        if differ:
            changes = "; ".join(f"{k}: {before.get(k)!r} then, {settings[k]!r} now" for k in differ)
            raise OutputDirError(
                f"{str(root)!r} holds a suite started with other settings ({changes}); resume it with the same "
                f"settings (see {SETTINGS_FILE}), pass --overwrite to start again, or choose another --out. "
                "Nothing was changed.")

    def start() -> None:
        """Record the settings before the first entry writes (an organism refused before that writes nothing)."""
        root.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps(settings, indent=2))
    if data_dir is None and os.environ.get("AO_DATA_DIR"):
        data_dir = os.environ["AO_DATA_DIR"]
    orc = oracle if isinstance(oracle, ActivationOracle) else load_oracle(oracle)
    base_spec = orc.config.base_model
    results: list[dict[str, Any]] = []
    sections: list[str] = []
    reused: list[str] = []
    verdicts: dict[str, dict[str, Any]] = {}  # each organism's behaviour-check verdict
    # every organism the suite used (folder name -> task, options): TruthfulQA MC builds or finds them from it
    specs: dict[str, tuple[str, Mapping[str, Any]]] = {}
    known_cards: dict[str, dict[str, Any]] = {}  # organism name -> its card
    timings_path = root / TIMINGS_FILE

    def read_timings() -> dict[str, Any]:
        try:
            found = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}
        return found if isinstance(found, dict) else {}

    timings = read_timings()

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        """Record a fresh entry's wall time, from its first organism build to its results (not if it fails)."""
        t_start = time.perf_counter()
        yield
        timings[name] = {"wall_s": round(time.perf_counter() - t_start, 1), "date": date.today().isoformat(),
                         **_machine()}
        # merged into the file as it is now, so what else was written there meanwhile (a note on an
        # earlier entry, another entry's time) is kept
        on_disk = read_timings()
        on_disk[name] = timings[name]
        timings.update(on_disk)
        root.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(on_disk, indent=2))

    def organisms_of(task: str, options: Sequence[Mapping[str, Any]], build: bool = True) -> list[Path]:
        """The organisms' folders, judged by their cards; ``build=False`` (an entry whose results are reused):
        judged by the cards this suite saved when it first used them, built only where none was saved."""
        cards: dict[Path, dict[str, Any]] = {}
        for o in options:
            path = organism_dir(task, base=base_spec, options=o)
            saved = root / CARDS_DIR / f"{path.name}.json"
            if not build and saved.is_file():
                cards[path] = json.loads(saved.read_text())
            else:
                path = build_organism(task, base=base_spec, options=o, data_dir=data_dir, progress=progress)
                cards[path] = read_card(path)
            specs[path.name] = (task, o)
        paths = list(cards)
        known_cards.update({p.name: c for p, c in cards.items()})
        controls = {json.dumps({k: v for k, v in c["options"].items() if k != "variant"}, sort_keys=True): c
                    for c in cards.values() if c["options"].get("variant") == "control"}
        for p, card in cards.items():
            control = None  # an organism is also judged against its control where its task says how
            if card["options"].get("variant", "organism") != "control":
                rest = {k: v for k, v in card["options"].items() if k != "variant"}
                control = controls.get(json.dumps(rest, sort_keys=True))
            verdicts[p.name] = require_fit(card, allow=allow_failing_organisms, control=control)
        start()  # every organism was accepted: record the settings and the cards
        (root / CARDS_DIR).mkdir(exist_ok=True)
        for p, card in cards.items():
            (root / CARDS_DIR / f"{p.name}.json").write_text(json.dumps(card, indent=2))
        return paths

    t0 = time.perf_counter()
    limits = {n: (task_limits or {}).get(n, limit) for n in names}
    bar = progress_bar(desc="audit suite", total=len(names), unit="entry", enabled=progress)

    def entry(name: str) -> None:
        bar.set_postfix_str(name)

    for n in names:
        if n in SUITE_EXTRAS:
            continue
        entry(n)
        t = get_audit_task(n)
        done = _matching_results(root / n, {"oracle": label, "limit": limits[n], "seed": seed,
                                            "methods": want_methods})
        if done is not None and t.organism_task:
            used = [organism_dir(t.organism_task, base=base_spec, options=o).name for o in t.default_targets()]
            if not all((root / CARDS_DIR / f"{u}.json").is_file() for u in used):
                done = None  # made with other organisms (their recipe changed since) or before cards were saved
        fresh = done is None or overwrite
        if not fresh:
            if t.organism_task:
                organisms_of(t.organism_task, t.default_targets(), build=False)  # judged by their saved cards
            results.append(done)  # the same audit, already run with these settings
            reused.append(n)
            bar.update(1)
            continue
        with timed(n):
            targets = organisms_of(t.organism_task, t.default_targets()) if t.organism_task else None
            start()
            results.append(run_audit(n, oracle=orc, targets=targets, out=root / n, limit=limits[n], seed=seed,
                                     data_dir=data_dir, overwrite=True, methods=tuple(want_methods),
                                     progress=progress, oracle_label=label))
        bar.update(1)
    if "diffing" in names:
        entry("diffing")
        from .diffing import DIFFING_VERSION, OFF_TRAIT, diffing_markdown, run_diffing

        # the folders first (nothing built): finished diffing results are reused without their six organisms
        pairs = [tuple(organisms_of(task, _pair_options(task), build=False)) for task in DIFFING_TASKS]
        twins = [_benign_twin(task, base_spec, data_dir, progress, build=False) for task in DIFFING_TASKS]
        n_prompts = max(2, limits["diffing"] or 20)
        # off_trait, version: results made before that control, or by other rules, run again
        want = {"oracle": label, "n_prompts": n_prompts, "seed": seed,
                "organism_folders": [[a.name, b.name] for a, b in pairs], "twins": [t.name for t in twins],
                "off_trait": [oq for oq, _ in OFF_TRAIT], "version": DIFFING_VERSION}
        res = _matching_results(root / "diffing", want)
        if res is None or overwrite:
            with timed("diffing"):
                pairs = [tuple(organisms_of(task, _pair_options(task))) for task in DIFFING_TASKS]
                twins = [_benign_twin(task, base_spec, data_dir, progress) for task in DIFFING_TASKS]
                start()
                res = run_diffing(pairs, oracle=orc, out=root / "diffing", n_prompts=n_prompts, seed=seed,
                                  overwrite=True, oracle_label=label, progress=progress, twins=twins)
        else:
            reused.append("diffing")
        sections.append(_demote(diffing_markdown(res)))
        bar.update(1)
    if "truthfulqa" in names:
        entry("truthfulqa")
        from .truthfulqa_audit import run_truthfulqa_audit, truthfulqa_markdown

        n_q = max(2, limits["truthfulqa"] or 50)
        res = _matching_results(root / "truthfulqa", {"oracle": label, "limit": n_q, "seed": seed})
        if res is None or overwrite:
            start()
            with timed("truthfulqa"):
                res = run_truthfulqa_audit(oracle=orc, data_dir=data_dir, out=root / "truthfulqa", limit=n_q,
                                           seed=seed, overwrite=True, oracle_label=label, progress=progress)
        else:
            reused.append("truthfulqa")
        sections.append(_demote(truthfulqa_markdown(res)))
        bar.update(1)
    if "truthfulqa-mc" in names:
        entry("truthfulqa-mc")
        from .truthfulqa_mc import run_truthfulqa_mc, truthfulqa_mc_markdown

        used = sorted(specs)
        # by card name and recipe (MC's config records both): the same organisms, wherever their folders are
        res = _matching_results(root / "truthfulqa-mc", {
            "limit": limits["truthfulqa-mc"], "seed": seed, "organisms": [known_cards[n]["name"] for n in used],
            "recipe_hashes": [str(known_cards[n].get("recipe_hash", ""))[:12] for n in used]})
        if res is None or overwrite:
            start()
            with timed("truthfulqa-mc"):
                # reused entries judged their organisms by the saved cards: build them now (cached ones are found)
                orgs = [build_organism(specs[n][0], base=base_spec, options=specs[n][1], data_dir=data_dir,
                                       progress=progress) for n in used]
                res = run_truthfulqa_mc(orgs, base=orc.model, data_dir=data_dir, out=root / "truthfulqa-mc",
                                        limit=limits["truthfulqa-mc"], seed=seed, overwrite=True, progress=progress)
        else:
            reused.append("truthfulqa-mc")
        sections.append(_demote(truthfulqa_mc_markdown(res)))
        bar.update(1)
    bar.close()
    table = combined_markdown(results) if results else ""
    wall = round(time.perf_counter() - t0, 1)
    cmd = command or (f"ao audit suite --oracle {oracle if isinstance(oracle, str) else '<oracle>'} --out {root.name} "
                      f"--limit {limit} --seed {seed}" +
                      (f" --tasks {','.join(names)}" if tasks else "") +
                      "".join(f" --task-limit {k}={v}" for k, v in sorted((task_limits or {}).items())))
    if reused:
        cmd += f"  (reused earlier results with the same settings for: {', '.join(reused)})"
    header = (f"Command: `{cmd}`\n\nMachine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores; "
              f"date {date.today().isoformat()}; wall time {wall / 60:.1f} min.\n")
    done_timings = {k: timings[k] for k in names if k in timings}
    if done_timings:
        header += "\n" + timings_markdown(done_timings) + "\n"
    if verdicts:
        header += "\nOrganisms' behaviour checks: " + "; ".join(
            f"{name} {v['status']}" for name, v in sorted(verdicts.items())) + ".\n"
        tried = {str(known_cards[n].get("task", "")): n for n, v in sorted(verdicts.items())
                 if v["status"] in ("fail", "unchecked")}
        for task, name in sorted(tried.items()):
            lines = get_organism_task(task).recipes_tried
            if lines:
                header += f"\nRecipes tried for {task} (e.g. {name}):\n" + "".join(f"- {t}\n" for t in lines)
    md = "# Audit suite\n\n" + header + "\n" + table + "".join("\n" + sec for sec in sections)
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.md").write_text(md)
    (root / "suite.json").write_text(json.dumps({"tasks": names, "command": cmd, "wall_s": wall,
                                                 "entry_wall_s": {k: v["wall_s"] for k, v in done_timings.items()},
                                                 "organism_verdicts": {k: v["status"] for k, v in verdicts.items()},
                                                 "results": [str(root / n / "results.json") for n in names]},
                                                indent=2))
    if evals_md is not None:
        Path(evals_md).write_text(md)
    return {"markdown": md, "results": results, "wall_s": wall}
