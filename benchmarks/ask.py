"""Benchmark the oracle's ask path on the embedded SmolLM2-135M (CPU).

(a) 64 activation sets x 4 questions: batched ``ask`` vs a one-at-a-time loop (goal >= 4x).
(b) injection overhead: batched ``ask`` vs plain ``generate`` on the same prompts without hooks
    (same batches, same number of new tokens; goal <= 10%).
(c) 16 questions about one activation set: prefix reuse vs recomputing the prefix (goal >= 2x).
(d) ``choose`` Yes/No over the 64 sets, full inputs and last tokens: batched prompts vs one at a time
    (``batch_size=1``; the audits' forced choices go through this path).

Run: .venv/bin/python benchmarks/ask.py [--sets 64] [--new-tokens 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
from _machine import cpu_name

import activation_oracles as ao
from activation_oracles.forward import generation_kwargs

TEXTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp for passing ships.",
    "Quarterly revenue rose by twelve percent, driven mostly by strong sales in the Asian market.",
    "She mixed flour, sugar and butter, then folded in the blueberries before baking the muffins.",
    "The committee postponed the vote until the new safety report could be reviewed by everyone.",
    "A small robot rolled across the kitchen floor, beeping happily as it searched for crumbs.",
    "The river flooded the valley after three days of heavy rain, forcing families to evacuate.",
    "He practised the violin for hours, hoping to win a place in the city's youth orchestra.",
    "Astronomers detected a faint signal from a distant galaxy, older than any seen before.",
]
QUESTIONS = ["What is this text about?", "Is the sentiment positive?", "Who is mentioned?", "Where does this happen?"]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    target = ao.load_model("smollm2-135m")
    oracle = ao.ActivationOracle.untrained(target)
    prompts = [f"{TEXTS[i % len(TEXTS)]} (note {i})" for i in range(args.sets)]
    acts_full = ao.capture(target, prompts, layer_percent=50, chat=False)
    acts = [a.last(8) for a in acts_full]  # segment mode, like the reference's last-tokens input
    gen = {"min_new_tokens": args.new_tokens}
    n = args.new_tokens

    # (a) batched vs loop
    pairs_a = [a for a in acts for _ in QUESTIONS]
    pairs_q = [q for _ in acts for q in QUESTIONS]
    oracle.ask(pairs_a[:4], pairs_q[:4], max_new_tokens=n, generate_kwargs=gen)  # warm-up
    t_batched = timed(lambda: oracle.ask(pairs_a, pairs_q, max_new_tokens=n, batch_size=args.batch_size,
                                         reuse_prefix=False, generate_kwargs=gen), args.repeats)
    t_loop = timed(lambda: [oracle.ask(a, q, max_new_tokens=n, generate_kwargs=gen)
                            for a, q in zip(pairs_a, pairs_q)], 1)

    # (b) injection overhead: identical batches through plain generate without any hook
    items = [oracle._item(a, q, None) for a, q in zip(pairs_a, pairs_q)]

    def plain() -> None:
        for start in range(0, len(items), args.batch_size):
            chunk = items[start:start + args.batch_size]
            ids, mask = oracle._left_pad([it.prompt.input_ids for it in chunk])
            with torch.no_grad():
                target.hf.generate(input_ids=ids, attention_mask=mask,
                                   **generation_kwargs(oracle.model.tokenizer, n, 0.0, gen))

    t_plain_b, t_ask_b = [], []
    for _ in range(args.repeats):  # interleave so drift hits both alike
        t0 = time.perf_counter(); plain(); t_plain_b.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        oracle.ask(pairs_a, pairs_q, max_new_tokens=n, batch_size=args.batch_size, reuse_prefix=False,
                   generate_kwargs=gen)
        t_ask_b.append(time.perf_counter() - t0)
    t_plain, t_ask = statistics.median(t_plain_b), statistics.median(t_ask_b)

    # (c) prefix reuse, full-sequence activations of one longer context
    long_acts = ao.capture(target, " ".join(TEXTS[:4]), layer_percent=50)
    questions16 = [f"{q} Answer briefly, case {i}." for i in range(4) for q in QUESTIONS]
    t_reuse = timed(lambda: oracle.ask(long_acts, questions16, max_new_tokens=n, generate_kwargs=gen), args.repeats)
    t_noreuse = timed(lambda: oracle.ask(long_acts, questions16, max_new_tokens=n, reuse_prefix=False,
                                         generate_kwargs=gen), args.repeats)

    # (d) batched forced choices
    t_choose = {}
    for mode, view in (("full", lambda a: a), ("last token", lambda a: a.last(1))):
        views = [view(a) for a in acts_full]
        t_choose[mode] = (timed(lambda: oracle.choose(views, QUESTIONS[1], ["Yes", "No"], batch_size=1), 1),
                          timed(lambda: oracle.choose(views, QUESTIONS[1], ["Yes", "No"],
                                                      batch_size=args.batch_size), args.repeats))

    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"date {datetime.date.today()}; model smollm2-135m fp32; {n} new tokens per answer")
    print()
    print("| measurement | value | goal | pass |")
    print("|---|---|---|---|")
    ra = t_loop / t_batched
    print(f"| (a) {len(pairs_a)} asks ({args.sets} sets x {len(QUESTIONS)} q): loop {t_loop:.1f} s vs batched "
          f"{t_batched:.1f} s | {ra:.1f}x | >= 4x | {'yes' if ra >= 4 else 'NO'} |")
    ov = t_ask / t_plain - 1
    print(f"| (b) injection overhead: ask {t_ask:.2f} s vs plain generate {t_plain:.2f} s | {ov * 100:+.1f}% | "
          f"<= 10% | {'yes' if ov <= 0.10 else 'NO'} |")
    rc = t_noreuse / t_reuse
    print(f"| (c) 16 questions, {len(long_acts)} positions: no reuse {t_noreuse:.2f} s vs prefix reuse "
          f"{t_reuse:.2f} s | {rc:.1f}x | >= 2x | {'yes' if rc >= 2 else 'NO'} |")
    for mode, (one, batched) in t_choose.items():
        print(f"| (d) choose Yes/No, {args.sets} sets, {mode}: one at a time {one:.2f} s vs batched {batched:.2f} s "
              f"| {one / batched:.1f}x | - | - |")


if __name__ == "__main__":
    main()
