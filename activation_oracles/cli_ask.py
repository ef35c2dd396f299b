"""``ao ask``: capture (or load) activations and ask an oracle about them.

Kept apart from :mod:`activation_oracles.cli` (one subcommand, one idea); like
every subcommand it imports torch only inside its handler.

    ao ask --target smollm2-135m --prompt "I love this film!" --untrained \\
           --question "Is the sentiment positive?" --choices Yes,No
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

MODES = ("full", "segment", "tokens")


def _add_ask_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ask", help="ask an activation oracle questions about a prompt's activations",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Capture a target model's residual stream on a prompt (or load a saved capture with --acts)\n"
                    "and ask an oracle questions about it: free-text answers, or probabilities over --choices.",
        epilog="examples:\n"
               "  ao ask --prompt 'I love this film!' --untrained --question 'Is the sentiment positive?' "
               "--choices Yes,No\n"
               "  ao ask --acts acts.safetensors --question 'What is the text about?' --mode segment\n"
               "  ao ask --prompt 'The cat sat.' --mode tokens --question 'Is this an animal?' --choices Yes,No --json\n"
               "  ao ask --prompt 'Tell me about owls.' --describe")
    src = p.add_argument_group("activations")
    src.add_argument("--target", default=None, metavar="MODEL",
                     help="target model spec (embedded default, local dir or hub id). Default: the base of an "
                          "--oracle directory (a tiny run's rebuilt base included), else smollm2-135m.")
    src.add_argument("--prompt", metavar="TEXT", help="the text to run through the target ('-' reads stdin).")
    src.add_argument("--acts", metavar="FILE", help="a saved capture (ao capture --out) instead of --target/--prompt.")
    which = src.add_mutually_exclusive_group()
    which.add_argument("--layer", type=int, metavar="N", help="source block to read.")
    which.add_argument("--layer-percent", type=float, metavar="P", help="source depth in percent. Default: 50.")
    src.add_argument("--positions", default="all", metavar="SPEC",
                     help="positions to capture: 'all', 'last:N', 'i:j' or an index. Default: %(default)s.")
    src.add_argument("--no-chat", dest="chat", action="store_false", help="run the prompt as raw text.")
    orc = p.add_argument_group("oracle")
    kind = orc.add_mutually_exclusive_group()
    kind.add_argument("--oracle", default="smollm2-135m", metavar="SPEC",
                      help="oracle directory or shipped name. Default: %(default)s.")
    kind.add_argument("--untrained", action="store_true",
                      help="the target's base model with the same injection and no adapter (baseline).")
    orc.add_argument("--coeff", type=float, default=None, help="override the injection coefficient (0 = control).")
    q = p.add_argument_group("questions")
    q.add_argument("--question", action="append", default=None, metavar="Q", help="a question (repeatable).")
    q.add_argument("--describe", action="store_true",
                   help="ask for an open description of the activations (oracle.describe: the question "
                        "'Can you describe what is happening in this text?'), before any --question.")
    q.add_argument("--mode", default="full", choices=MODES,
                   help="full: every captured position; segment: the last --segment-len positions; tokens: "
                        "one answer per position. Default: %(default)s.")
    q.add_argument("--segment-len", type=int, default=10, metavar="N", help="segment mode length. Default: 10.")
    q.add_argument("--choices", metavar="A,B", help="comma-separated choices: print probabilities instead of text.")
    q.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="the longest open answer, in tokens; generation stops earlier where the oracle ends its "
                        "answer, and a note says when one was cut at this budget. Default: %(default)s.")
    q.add_argument("--json", action="store_true", help="one JSON object per answer.")
    q.add_argument("--out", metavar="FILE", help="also write every answer as one JSON object per line (JSONL).")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.set_defaults(func=cmd_ask)


def cmd_ask(args: argparse.Namespace) -> int:

    import activation_oracles as ao
    from activation_oracles.checks import check_output_file, check_text
    from activation_oracles.cli import CLIUsageError, _err, read_prompt
    from activation_oracles.errors import ChoicesError

    if (args.acts is None) == (args.prompt is None):
        raise CLIUsageError("give either --prompt TEXT (captured from --target) or --acts FILE, not both or neither.")
    # Everything the user typed is checked before the (slow) model loads.
    if args.max_new_tokens < 1:
        raise CLIUsageError(f"--max-new-tokens {args.max_new_tokens}; expected an integer >= 1 (the longest answer).")
    if args.segment_len < 1:
        raise CLIUsageError(f"--segment-len {args.segment_len}; expected an integer >= 1.")
    if args.coeff is not None and not math.isfinite(args.coeff):
        raise CLIUsageError(f"--coeff {args.coeff}; expected a finite number (1 = the reference, 0 = the control).")
    if args.describe and args.choices is not None:
        raise CLIUsageError("--describe asks for free text; leave out --choices (or ask a --question with them).")
    if not args.question and not args.describe:
        raise CLIUsageError("give at least one --question Q, or --describe for an open description.")
    from activation_oracles.oracle import DESCRIBE_QUESTION

    args.question = ([DESCRIBE_QUESTION] if args.describe else []) + list(args.question or [])
    for q in args.question:
        check_text("--question", q)
    out_path = check_output_file("--out", args.out, "answers") if args.out is not None else None
    prompt = read_prompt(args.prompt) if args.prompt is not None else None
    choices = None
    if args.choices is not None:
        choices = [c.strip() for c in args.choices.split(",")]
        if len(choices) < 2 or any(not c for c in choices):
            raise ChoicesError(f"--choices {args.choices!r}; give at least two non-empty comma-separated choices, "
                               "e.g. --choices Yes,No.")

    target = None
    preloaded = None
    if args.acts is not None:
        acts = ao.Activations.load(args.acts)
        if args.layer is not None:
            acts = acts.at_layer(args.layer)
        elif len(acts.layers) > 1:
            raise CLIUsageError(f"{args.acts} holds layers {list(acts.layers)}; pick one with --layer N.")
    else:
        if args.target is None and not args.untrained and os.path.isdir(str(args.oracle)):
            # The oracle's own base is the target (one copy of the weights; the adapter is off outside
            # oracle calls): this is how a tiny run, whose base exists nowhere on disk, is asked.
            _err(f"loading oracle {args.oracle} and its base ...")
            preloaded = ao.load_oracle(args.oracle, dtype=args.dtype)
            target = preloaded.model
        else:
            _err(f"loading target {args.target or 'smollm2-135m'} ...")
            target = ao.load_model(args.target or "smollm2-135m", dtype=args.dtype)
        kw: dict[str, Any] = {"positions": int(args.positions) if args.positions.lstrip("-").isdigit()
                              else args.positions, "chat": args.chat}
        if args.layer is not None:
            kw["layers"] = args.layer
        else:
            kw["layer_percent"] = args.layer_percent or 50.0
        acts = ao.capture(target, prompt, **kw)
        from activation_oracles.cli import format_tokens

        _err(format_tokens(target.tokenizer, acts))

    if args.untrained:
        base = target if target is not None else ao.load_model(acts.model_name, dtype=args.dtype)
        oracle = ao.ActivationOracle.untrained(base)
        oracle_name = f"untrained {base.name}"
    elif preloaded is not None:
        oracle, oracle_name = preloaded, str(args.oracle)
    else:
        _err(f"loading oracle {args.oracle} ...")
        oracle = ao.load_oracle(args.oracle, base=target, dtype=args.dtype)
        oracle_name = str(args.oracle)
    if args.coeff is not None:
        oracle = oracle.with_config(coeff=args.coeff)

    if args.mode == "segment":
        inputs = [("segment", acts.last(min(args.segment_len, len(acts))))]
    elif args.mode == "tokens":
        inputs = [(f"token {p} {acts.tokens[p]!r}", acts.token(p)) for p in acts.positions]
    else:
        inputs = [("full", acts)]

    records: list[dict[str, Any]] = []
    n_cut = 0
    for question in args.question:
        sets = [a for _, a in inputs]
        if choices is not None:
            results: list[Any] = oracle.choose(sets, question, choices)
        else:
            results = oracle.ask(sets, question, max_new_tokens=args.max_new_tokens)
        for (label, a), res in zip(inputs, results):
            record = {"question": question, "mode": args.mode, "input": label, "layer": a.layer,
                      "n_positions": len(a), "oracle": oracle_name}
            if choices is not None:
                record["probs"] = res
            else:
                cut = bool(getattr(res, "truncated", False))
                record.update({"answer": str(res), "truncated": cut})
                n_cut += cut
            records.append(record)
            if args.json:
                print(json.dumps(record))
            else:
                shown = ", ".join(f"{k}: {v:.3f}" for k, v in res.items()) if choices is not None else res
                where = "" if args.mode == "full" else f" [{label}]"
                ellipsis = " [...]" if record.get("truncated") else ""
                print(f"Q: {question}{where}\nA: {shown}{ellipsis}\n")
    if n_cut:
        which = "an answer" if n_cut == 1 else f"{n_cut} answers"
        _err(f"note: {which} reached --max-new-tokens {args.max_new_tokens} before the oracle ended it (marked "
             "[...]); pass a larger --max-new-tokens to read the rest.")
    if out_path is not None:
        from activation_oracles.files import atomic_write_bytes

        atomic_write_bytes(out_path, "".join(json.dumps(r) + "\n" for r in records).encode())
        _err(f"answers written to {out_path}")
    return 0

