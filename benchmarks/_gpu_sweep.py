"""Several variations of the smollm2-135m recipe trained side by side on one leased GPU (issue 14).

Run by ``benchmarks/gpu_recipe.sh`` (hence the underscore: ``make bench`` skips it).

One device call is worth many CPU hours, so it answers several questions at once: each
variation below changes one thing against a base (precision, mixture, windows, batch),
all train concurrently for ``--minutes``, then the card's classification evaluations run
on every one (``--card-evals``, with their untrained / shuffled / coeff0 controls).

Run by ``benchmarks/gpu_recipe.sh`` with ``AO_GPU_SWEEP=1`` (which sets up the package, the
model and the data first); on a CPU, rehearse with a tiny budget::

    python benchmarks/_gpu_sweep.py --data-dir ../shared/data --out /tmp/sweep --device cpu \\
        --minutes 0.3 --n-examples 32 --card-n 2 --variants s1,base

What comes back under ``--out`` (a leased machine returns at most 8 files): ``sweep.md`` (one
table), ``results.tgz`` (each variation's config, train.log, metrics.jsonl, card) and
``oracles.tgz.part.*`` (the ``--keep`` best exported oracles).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from activation_oracles.training.config import SourceSpec, TrainConfig
from activation_oracles.training.presets import PRESET_FAMILIES, preset, strong_training_tasks

S1_TASKS = ["gmt/larger_than", "relations/verb_past_tense", "relations/adj_comparative", "gmt/cities"]


def _training_tasks() -> list[str]:
    from activation_oracles.training.classification import DEFAULT_TASKS

    return sorted(n for n, t in DEFAULT_TASKS.items() if not t.held_out)


def variants(root: Path) -> dict[str, dict[str, Any]]:
    """Each variation: its training sources and optimiser settings (the rest is the preset's)."""
    cls_dir, tqa = str(root / "classification"), str(root / "truthfulqa" / "TruthfulQA.csv")
    ctx = {"max_context_tokens": 128, "shuffle_buffer": 256}
    cp = [SourceSpec("context_prediction", 0.10, {"path": tqa, "column": "Best Answer", "n_positions": [1, 8],
                                                 "n_tokens": [1, 6], "name": "cp_truthfulqa_answers", **ctx}),
          SourceSpec("context_prediction", 0.05, {"path": tqa, "column": "Question", "n_positions": [1, 1],
                                                 "n_tokens": [1, 4], "name": "cp_truthfulqa_single", **ctx})]
    fam = SourceSpec("families", 0.45, {"data_dir": str(root), "split": "train", "families": list(PRESET_FAMILIES),
                                        "family_weights": {"topic": 0.5}, "kind_weights": [0.5, 0.3, 0.2],
                                        "window_sizes": [1, 50]})

    def cls(tasks: list[str], weight: float = 0.40, **kw: Any) -> SourceSpec:
        # The card's held-out evaluation reads 2/3 single positions and 1/3 windows of 1-50 tokens:
        # the base trains on the same shapes (the preset's windows stop at 24).
        return SourceSpec("classification", weight, {"data_dir": cls_dir, "split": "train", "max_context_tokens": 128,
                                                     "tasks": tasks, "window_sizes": [1, 50], **kw})

    strong = strong_training_tasks()
    base = [cls(strong), fam, *cp]

    def text(src: SourceSpec) -> SourceSpec:
        return SourceSpec("activation_oracles.training.text_in_prompt:TextInPrompt", src.weight,
                          {"inner_kind": src.kind, "inner": dict(src.params)})

    if os.environ.get("AO_SWEEP_SET") == "text":
        # the text-in-prompt ceiling (training/text_in_prompt.py): could the oracle's own language model
        # answer the held-out questions even with the text in plain view?
        return {"text_strong": {"sources": [text(cls(strong, 0.5)), text(fam)], "bf16": False, "text": True},
                "text_alltasks": {"sources": [text(cls(_training_tasks(), 0.5)), text(fam)], "bf16": False,
                                  "text": True},
                "text_strong_bf16": {"sources": [text(cls(strong, 0.5)), text(fam)], "bf16": True, "text": True}}
    return {
        # positive control: four strong tasks at single positions (read at 95% by step 128 on the CPU, fp32)
        "s1": {"sources": [cls(S1_TASKS, 1.0, single_fraction=1.0)], "bf16": True},
        "base": {"sources": base, "bf16": True},
        "base_fp32": {"sources": base, "bf16": False},
        "alltasks_fp32": {"sources": [cls(_training_tasks()), fam, *cp], "bf16": False},
        "single_fp32": {"sources": [cls(strong, single_fraction=1.0), fam, *cp], "bf16": False},
        "preset_fp32": {"sources": None, "bf16": False},
        "base_fp32_b64": {"sources": base, "bf16": False, "batch_size": 64, "lr": 1e-3},
    }


def config_for(name: str, spec: dict[str, Any], root: Path, *, device: str, minutes: float, n_examples: int,
               eval_every: int, eval_n: int) -> TrainConfig:
    cfg = preset("smollm2-135m", data_dir=root)
    batch = int(spec.get("batch_size", 16))
    data = cfg.data
    if spec["sources"] is not None:
        data = dataclasses.replace(data, sources=tuple(spec["sources"]))
    data = dataclasses.replace(data, n_examples=n_examples * batch // 16)
    optim = dataclasses.replace(cfg.optim, lr=float(spec.get("lr", 5e-4)), batch_size=batch, bf16=spec["bf16"],
                                loss_weighting="example", max_minutes=minutes, num_threads=2)
    ev = dataclasses.replace(cfg.eval, every=eval_every, n_examples=eval_n)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, device=device), optim=optim, data=data,
                               eval=ev, checkpoint=dataclasses.replace(cfg.checkpoint, every=0, keep=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="where runs are written (default: OUT/work)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--n-examples", type=int, default=24_000, help="per batch-16 run (scaled with the batch)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-n", type=int, default=128)
    p.add_argument("--card-n", type=int, default=40)
    p.add_argument("--card-evals", default="classification_held_out,classification_test")
    p.add_argument("--card-seconds", type=float, default=110)
    p.add_argument("--variants", default="")
    p.add_argument("--keep", type=int, default=3, help="adapters brought back (the best by held-out accuracy)")
    args = p.parse_args(argv)

    root, out = Path(args.data_dir).resolve(), Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    table = variants(root)
    chosen = [v for v in args.variants.split(",") if v] or list(table)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "AO_PROGRESS": "never"}

    from activation_oracles.embedded import embedded_dir

    embedded_dir()  # convert the embedded model once, before the runs share its cache
    t0 = time.time()
    procs = {}
    for name in chosen:
        cfg = config_for(name, table[name], root, device=args.device, minutes=args.minutes,
                         n_examples=args.n_examples, eval_every=args.eval_every, eval_n=args.eval_n)
        (work / "logs" / name).mkdir(parents=True, exist_ok=True)
        cfg_file = work / "logs" / name / "config.toml"
        cfg.save(cfg_file)
        log = open(work / "logs" / name / "train.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "activation_oracles", "train", "--config", str(cfg_file),
                                         "--out", str(work / name), "--overwrite"], stdout=log,
                                        stderr=subprocess.STDOUT, env=env), log)
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        print(f"[sweep {time.time() - t0:6.0f}s] {name}: training exited {rc}", flush=True)

    from activation_oracles.training.export import export_oracle

    exported = []
    for name in chosen:
        run = work / name
        if not (run / "adapter_model.safetensors").is_file():
            continue
        dest = work / "export" / name
        export_oracle(run, dest, data_root=None, max_mb=40.0, overwrite=True)
        for extra in ("metrics.jsonl", "config.toml"):
            if (run / extra).is_file():
                (dest / extra).write_bytes((run / extra).read_bytes())
                (work / "logs" / name / extra).write_bytes((run / extra).read_bytes())
        exported.append(name)
    print(f"[sweep {time.time() - t0:6.0f}s] exported {exported}", flush=True)

    cards = {}
    for name in exported:
        logs = work / "logs" / name
        if table[name].get("text"):
            cards[name] = subprocess.Popen(
                ["timeout", str(int(args.card_seconds)), sys.executable, "-c", TEXT_CARD, str(work / "export" / name),
                 str(root), args.device, str(args.card_n), str(logs / "card.json")],
                stdout=open(logs / "card.log", "w"), stderr=subprocess.STDOUT, env=env)
            continue
        cards[name] = subprocess.Popen(
            ["timeout", str(int(args.card_seconds)), sys.executable, "-m", "activation_oracles.evals.oracle_card",
             "--oracle", str(work / "export" / name), "--data-dir", str(root), "--device", args.device,
             "--n", str(args.card_n), "--seed", "0", "--details", "--evals", args.card_evals,
             "--out", str(logs / "card.json"), "--markdown", str(logs / "card.md")],
            stdout=open(logs / "card.log", "w"), stderr=subprocess.STDOUT, env=env)
    for proc in cards.values():
        proc.wait()
    print(f"[sweep {time.time() - t0:6.0f}s] cards done", flush=True)
    lines = summary(work, chosen)
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # What may come back is limited (8 files, 16 MiB each, 64 MiB together): every log and card in one
    # archive, and the adapters of the best `--keep` variations (held-out accuracy on the card, else the
    # last in-training evaluation) in 15 MB parts.
    subprocess.run(["tar", "czf", str(out / "results.tgz"), "-C", str(work), "logs"], check=False)
    best = sorted(exported, key=lambda n: -_score(work, n))[: args.keep]
    print(f"[sweep {time.time() - t0:6.0f}s] bringing back {best}", flush=True)
    if best:
        subprocess.run(f"tar czf {work}/oracles.tgz -C {work}/export {' '.join(best)} && "
                       f"split -b 15M {work}/oracles.tgz {out}/oracles.tgz.part.", shell=True, check=False)
    return 0


TEXT_CARD = """
import json, sys
import activation_oracles as ao
from activation_oracles.evals.text_ceiling import text_ceiling
oracle_dir, root, device, n, out = sys.argv[1:]
target = ao.load_model("smollm2-135m", device=device)
oracle = ao.load_oracle(oracle_dir, base=target)
rows = text_ceiling(oracle, target, data_dir=root, n_per_eval=int(n))
open(out, "w").write(json.dumps({"meta": {"kind": "text_in_prompt"}, "rows": rows}, indent=1))
"""


def _score(work: Path, name: str) -> float:
    card = work / "logs" / name / "card.json"
    if card.is_file():
        rows = dict(_card_rows(json.loads(card.read_text())))
        held = rows.get("classification_held_out", {})
        if isinstance(held.get("oracle"), float):
            return held["oracle"]
    metrics = work / name / "metrics.jsonl"
    if metrics.is_file():
        evals = [json.loads(x) for x in metrics.read_text().splitlines() if "eval/yes_no_acc" in x]
        if evals:
            return float(evals[-1]["eval/yes_no_acc"]) - 1.0  # ranks below any variation with a card
    return -2.0


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def summary(work: Path, names: list[str]) -> list[str]:
    """One row per variation: steps, last training loss, and each card evaluation beside its controls."""
    lines = ["| variant | steps | loss | eval | oracle | untrained | shuffled | coeff0 | n |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name in names:
        steps, loss = "-", "-"
        log = work / "logs" / name / "train.log"
        metrics = work / name / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            train = [r for r in rows if "loss" in r]
            if train:
                steps, loss = str(train[-1]["step"]), f"{train[-1]['loss']:.3f}"
        card_file = work / "logs" / name / "card.json"
        if not card_file.is_file():
            lines.append(f"| {name} | {steps} | {loss} | (no card{'' if log.is_file() else ', no log'}) | | | | | |")
            continue
        card = json.loads(card_file.read_text())
        for ev, r in _card_rows(card):
            lines.append(f"| {name} | {steps} | {loss} | {ev} | {_pct(r.get('oracle'))} | {_pct(r.get('untrained'))} "
                         f"| {_pct(r.get('shuffled'))} | {_pct(r.get('coeff0'))} | {r.get('n', '-')} |")
    return lines


def _card_rows(card: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    by_eval: dict[str, dict[str, Any]] = {}
    for r in card.get("rows", []):
        row = by_eval.setdefault(r["eval"], {"n": r.get("n", "-")})
        method = {"trained": "oracle", "text_in_prompt": "oracle", "text_in_prompt_coeff0": "coeff0"}.get(r["method"],
                                                                                                      r["method"])
        row[method] = r.get("accuracy")
    return list(by_eval.items())


if __name__ == "__main__":
    raise SystemExit(main())
