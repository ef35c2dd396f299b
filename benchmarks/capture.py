"""Benchmark: what residual capture costs on the embedded SmolLM2-135M (issue 2).

Times one forward pass of a batch of random token ids (default 8 x 128, bf16,
CPU) in these variants, interleaved round by round in a shuffled order so that
drift on a shared machine hits every variant alike, and reports the medians:

* ``bare``: the plain model call, no hooks (the reference);
* ``torch`` capture of blocks {7, 15, 22} with ``stop_early`` (blocks 23-29 and
  the LM head are skipped): bound ratio <= 23/30 + 0.05;
* ``torch`` capture of the same blocks without ``stop_early``: bound overhead <= 3%;
* the ``nnsight`` and ``transformer_lens`` backends, with and without
  ``stop_early``, as ratios to the torch backend (reported, no bound). A backend
  that is missing or fails prints ``n/a (error)`` with the reason.

Each timed call is the whole ``with capture_residuals(...): model(...)`` block, i.e.
what a user pays per capture. Before timing, every capture is checked against the
torch backend's (shape, max |diff|).

Run: ``.venv/bin/python benchmarks/capture.py`` (``--help`` for options). The
printed markdown goes into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import activation_oracles as ao
from activation_oracles.hooks import capture_residuals

LAYERS = (7, 15, 22)
STOP_EARLY_BOUND = 23 / 30 + 0.05
NO_STOP_OVERHEAD_BOUND = 0.03


@dataclass
class Variant:
    name: str
    backend: str | None  # None: the bare forward
    stop_early: bool
    run: Callable[[], dict[int, torch.Tensor] | None]
    times: list[float] = field(default_factory=list)
    error: str | None = None
    max_diff: float | None = None
    max_rel_diff: float | None = None  # max |diff| / max |torch value|, per layer, worst layer


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_variants(model: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> list[Variant]:
    def bare() -> None:
        with torch.no_grad():
            model.hf(input_ids=input_ids, attention_mask=mask)
        return None

    def capture(backend: str, stop_early: bool) -> Callable[[], dict[int, torch.Tensor]]:
        def run() -> dict[int, torch.Tensor]:
            with torch.no_grad(), capture_residuals(model, list(LAYERS), stop_early=stop_early,
                                                    backend=backend) as cache:
                model.hf(input_ids=input_ids, attention_mask=mask)
            return {layer: cache[layer] for layer in LAYERS}
        return run

    variants = [Variant("bare forward", None, False, bare)]
    for backend in ("torch", "nnsight", "transformer_lens"):
        for stop_early in (True, False):
            variants.append(Variant(f"capture {sorted(LAYERS)}", backend, stop_early, capture(backend, stop_early)))
    return variants


def check(variants: list[Variant], batch: int, seq: int, d_model: int) -> None:
    """Run each capture once; drop the ones that fail and record max |diff| vs the torch backend."""
    reference: dict[int, torch.Tensor] | None = None
    for v in variants:
        if v.backend is None:
            continue
        try:
            out = v.run()
            assert out is not None
            for layer in LAYERS:
                shape = tuple(out[layer].shape)
                if shape != (batch, seq, d_model):
                    raise RuntimeError(f"layer {layer} captured shape {shape}, expected {(batch, seq, d_model)}")
        except Exception as exc:  # noqa: BLE001 - a broken backend is reported, not fatal
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            v.error = f"{type(exc).__name__}: {message}"[:160]
            continue
        if reference is None:
            reference = out  # the first capture is torch with stop_early
        v.max_diff = max((out[layer].float() - reference[layer].float()).abs().max().item() for layer in LAYERS)
        v.max_rel_diff = max(((out[layer].float() - reference[layer].float()).abs().max()
                              / reference[layer].float().abs().max()).item() for layer in LAYERS)


def time_all(variants: list[Variant], warmup: int, repeats: int, seed: int, clock: str = "wall") -> None:
    """Fill ``v.times``. ``clock="cpu"`` measures this process's CPU time (all threads) instead of wall time:
    on a shared machine it counts only our own work, so ratios survive other jobs' load."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    live = [v for v in variants if v.error is None]
    order_rng = random.Random(seed)
    for round_index in range(warmup + repeats):
        order = live[:]
        order_rng.shuffle(order)
        for v in order:
            t0 = timer()
            v.run()
            elapsed = timer() - t0
            if round_index >= warmup:
                v.times.append(elapsed)


def render(variants: list[Variant], args: argparse.Namespace, model: Any, total_s: float) -> tuple[str, bool]:
    bare = statistics.median(variants[0].times)
    torch_median = {v.stop_early: statistics.median(v.times) for v in variants
                    if v.backend == "torch" and v.times}
    tokens = args.batch * args.seq
    unit = "ms" if args.clock == "wall" else "CPU ms"
    ok = True
    lines = [
        f"- machine: {cpu_model()}, {available_cores()} cores available, torch threads {torch.get_num_threads()}",
        f"- software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {_version('transformers')}, nnsight {_version('nnsight')}, "
        f"transformer_lens {_version('transformer_lens')}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- setup: {model.name} ({model.n_layers} blocks, d_model {model.d_model}), {args.dtype} on CPU, batch "
        f"{args.batch} x {args.seq} random token ids (seed {args.seed}), median of {args.repeats} runs after "
        f"{args.warmup} warm-up runs ({args.clock} clock), variants interleaved in a shuffled order each round; "
        f"total {total_s:.0f} s; load average before/after: {args.load_before} / {_loadavg()}",
        "",
        f"| variant | backend | stop_early | median {unit} | min {unit} | tokens/s | vs bare | vs torch "
        "| max abs diff vs torch | bound | result |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for v in variants:
        backend = v.backend or "-"
        stop = "-" if v.backend is None else ("yes" if v.stop_early else "no")
        if v.error is not None:
            lines.append(f"| {v.name} | {backend} | {stop} | n/a (error) | | | | | | | {v.error.replace('|', '/')} |")
            continue
        med = statistics.median(v.times)
        vs_bare = med / bare
        vs_torch = "-" if v.backend in (None, "torch") or v.stop_early not in torch_median \
            else f"{med / torch_median[v.stop_early]:.2f}x"
        diff = "-" if v.max_diff is None else ("0" if v.max_diff == 0 else
                                               f"{v.max_diff:.1e} ({v.max_rel_diff:.1e} rel.)")
        bound, result = "", ""
        if v.backend == "torch" and v.stop_early:
            passed = vs_bare <= STOP_EARLY_BOUND
            bound, result = f"ratio <= {STOP_EARLY_BOUND:.3f}", ("pass" if passed else "FAIL")
            ok &= passed
        elif v.backend == "torch":
            passed = vs_bare - 1 <= NO_STOP_OVERHEAD_BOUND
            bound = f"overhead <= {NO_STOP_OVERHEAD_BOUND:.0%}"
            result = f"{'pass' if passed else 'FAIL'} ({vs_bare - 1:+.1%})"
            ok &= passed
        lines.append(f"| {v.name} | {backend} | {stop} | {med * 1e3:.0f} | {min(v.times) * 1e3:.0f} "
                     f"| {tokens / med:.0f} | {vs_bare:.3f} "
                     f"| {vs_torch} | {diff} | {bound} | {result} |")
    return "\n".join(lines), ok


def _loadavg() -> str:
    try:
        return "{:.2f}".format(os.getloadavg()[0])
    except OSError:  # pragma: no cover
        return "?"


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=available_cores(), help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall-clock time (default), or this process's CPU time (robust on a busy machine)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a bound fails")
    args = parser.parse_args(argv)
    args.load_before = _loadavg()

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = ao.load_model("smollm2-135m", dtype=args.dtype)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.hf.get_input_embeddings().weight.shape[0]
    input_ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    mask = torch.ones_like(input_ids)

    t0 = time.perf_counter()
    variants = make_variants(model, input_ids, mask)
    check(variants, args.batch, args.seq, model.d_model)
    time_all(variants, args.warmup, args.repeats, args.seed, args.clock)
    table, ok = render(variants, args, model, time.perf_counter() - t0)
    print(table)
    if not ok:
        print("\nat least one bound FAILED", file=sys.stderr)
    return 1 if (args.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
