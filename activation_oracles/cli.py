"""The ``ao`` command line (also ``python -m activation_oracles``).

Every subcommand is one pair of functions:

* ``_add_<name>_parser(subparsers)`` declares its arguments and binds the handler
  with ``parser.set_defaults(func=cmd_<name>)``;
* ``cmd_<name>(args) -> int`` does the work and returns the exit status.

To add a subcommand (``ask``, ``train``, ``audit``...), write that pair and list
the ``_add_<name>_parser`` function in :data:`SUBCOMMANDS`. Handlers import torch,
transformers and the rest of the package *inside* the function: this module is
imported by ``ao --help``, which must answer at once without loading torch.
(Over 400 lines because it is the one table of subcommands: ``ask`` lives in ``cli_ask.py``,
``train``/``audit``/``data`` hand over to their packages; what remains is argument declarations.)

Errors raised on purpose (:class:`activation_oracles.errors.AOError`) print as one
``error: <message>`` line on stderr, no traceback (pass ``--traceback`` to see one).
The exit status says whose move it is: 2 for usage errors (argparse's convention: a bad
flag or value, fix the command), 1 for runtime failures (a file that cannot be read or
written, the network, a numerical failure: each error class's ``exit_status``). A closed
pipe (``ao train --list-keys | head``) ends the command quietly.

Every command runs in :func:`command_context`: the libraries' own warnings and progress bars
(transformers, peft, huggingface_hub) are hidden unless ``-v/--verbose`` is given (before or
after the subcommand), and our progress bars (with an ETA, on stderr, on a terminal only) are on.

>>> main(["--version"])  # doctest: +ELLIPSIS
ao ...
0
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .cli_ask import _add_ask_parser
from .training.cli import add_train_parser as _add_train_parser
from .training.probe_cli import add_data_parser as _add_data_parser
from .evals.cli import _add_audit_parser, _add_organism_parser
from .errors import AOError, CLIUsageError

__all__ = ["CLIUsageError", "build_parser", "format_summary", "main", "run_command"]

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure: an AOError whose exit_status is 1, or an OSError
EXIT_USAGE = 2  # bad input: argparse errors and the AOErrors that name a bad argument
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `yes | head` reports for `yes`, so `set -o pipefail` behaves alike

_DESCRIPTION = """\
activation oracles: capture a language model's residual-stream activations and
ask another model (the oracle) questions about them.

Run `ao <command> --help` for a command's options."""


# ---------------------------------------------------------------------------------------------------
# helpers shared by the subcommands (nothing heavy at import time)
# ---------------------------------------------------------------------------------------------------

def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--layers-path``: how to load the target model."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="smollm2-135m", metavar="SPEC",
                       help="'smollm2-135m' (the embedded default), a local model directory, or a Hugging Face "
                            "hub id (needs the network unless cached). Default: %(default)s.")
    group.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                       help="weights and activations dtype. Default: %(default)s.")
    group.add_argument("--device", default=None, metavar="DEV",
                       help="torch device, e.g. 'cpu' or 'cuda'. Default: cpu.")
    group.add_argument("--layers-path", default=None, metavar="DOTTED",
                       help="dotted path to the decoder blocks (e.g. 'model.layers') when discovery fails.")


def _add_capture_args(parser: argparse.ArgumentParser) -> None:
    """``--layers``/``--layer-percent``, ``--positions``, ``--no-chat``, ``--backend``."""
    group = parser.add_argument_group("what to capture")
    which = group.add_mutually_exclusive_group()
    which.add_argument("--layers", type=int, nargs="+", action="extend", metavar="L",
                       help="decoder block(s) to read; repeat or list several (--layers 7 15 or --layers 7 "
                            "--layers 15). Negative counts from the end.")
    which.add_argument("--layer-percent", type=float, metavar="P",
                       help="read the block at P%% depth, int(n_layers * P / 100). Default: 50.")
    group.add_argument("--positions", default="all", metavar="SPEC",
                       help="token positions to keep: 'all', 'last:N', 'i:j' (a Python slice) or an index. "
                            "Default: %(default)s.")
    group.add_argument("--no-chat", dest="chat", action="store_false",
                       help="feed the prompt as raw text instead of one user turn of the chat template.")
    group.add_argument("--backend", default="torch", choices=["torch", "nnsight", "transformer_lens"],
                       help="hook backend. Default: %(default)s (the fast path).")


def _embedded_needs_conversion(spec: str) -> bool:
    """True when ``spec`` is the embedded model and its one-time GGUF conversion has not run yet."""
    from . import embedded

    if spec.lower() != embedded.EMBEDDED_NAME:
        return False
    try:
        folder = embedded.cache_root() / "models" / embedded._CACHE_SUBDIR
        return not (folder / embedded._DONE_MARKER).is_file()
    except AttributeError:  # the cache layout changed: just skip the hint
        return False


def read_prompt(value: str, flag: str = "--prompt") -> str:
    """The text of ``--prompt`` (``-``: stdin), checked to be valid Unicode before any model loads.

    Non-UTF-8 bytes reach ``sys.argv`` as lone surrogates (Python's surrogateescape) and stdin
    raises a UnicodeDecodeError on them; both become a :class:`PromptError` naming the bytes.
    """
    from .checks import check_text
    from .errors import PromptError

    if value == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PromptError(f"{flag} - (stdin) holds bytes that are not UTF-8 ({data[exc.start:exc.start + 4]!r} "
                              f"at byte {exc.start}); convert the text to UTF-8 first, e.g. with iconv.") from None
    if not value.strip():
        from .errors import EmptyInputError

        raise EmptyInputError(f"{flag} {value!r} is empty; pass some text (or '-' to read it from stdin).")
    try:
        check_text(flag, value)
    except PromptError:
        raw = os.fsencode(value) if isinstance(value, str) else value
        raise PromptError(f"{flag} holds bytes that are not UTF-8 ({raw[:40]!r}); pass UTF-8 text (convert it with "
                          "iconv, or check the terminal's encoding).") from None
    return value


def check_device_arg(device: str | None) -> None:
    """``--device``, resolved before the (slow) load: torch would fail halfway with an AssertionError."""
    from .checks import check_device

    check_device(device)


def _load_model(args: argparse.Namespace) -> Any:
    import activation_oracles as ao

    # The per-tensor "Loading weights" bar is hidden by command_context unless --verbose.
    t0 = time.perf_counter()
    note = " (first run: converting the embedded model once, ~30 s)" if _embedded_needs_conversion(args.model) else ""
    _err(f"loading {args.model} ({args.dtype}){note} ...")
    model = ao.load_model(args.model, dtype=args.dtype, device=args.device, layers_path=args.layers_path)
    _err(f"loaded in {time.perf_counter() - t0:.1f} s")
    return model


def _capture(model: Any, prompt: str, args: argparse.Namespace) -> Any:
    """``ao.capture`` with the CLI's options, provenance of the run added to ``acts.meta``."""
    from dataclasses import replace

    import activation_oracles as ao

    positions: Any = args.positions
    if isinstance(positions, str) and positions.strip().lstrip("-").isdigit():
        positions = int(positions)  # "--positions -1": one token index
    kwargs: dict[str, Any] = {"positions": positions, "chat": args.chat, "backend": args.backend}
    if args.layers:
        kwargs["layers"] = list(args.layers)
    else:
        kwargs["layer_percent"] = 50.0 if args.layer_percent is None else args.layer_percent
    acts = ao.capture(model, prompt, **kwargs)
    meta = dict(acts.meta)
    meta.update({"prompt": prompt, "chat": args.chat, "dtype": args.dtype, "backend": args.backend,
                 "positions_spec": str(args.positions), "activation_oracles_version": __version__})
    return replace(acts, meta=meta)


def format_summary(acts: Any, *, prompt: str | None = None) -> str:
    """A short, readable description of an :class:`~activation_oracles.Activations`.

    One header (model, tokens, positions) and one row per layer with the
    ``[n_positions, d_model]`` shape and the mean / min / max L2 norm of the vectors.
    """
    lines = []
    lines.append(f"model      {acts.model_name} ({acts.n_layers} layers, d_model {acts.d_model}, "
                 f"dtype {str(acts.dtype).removeprefix('torch.')})")
    if prompt is not None:
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        lines.append(f"prompt     {shown!r}")
    n_tok = len(acts.token_ids)
    pos = list(acts.positions)
    if pos == list(range(n_tok)):
        pos_text = "all"
    elif len(pos) > 2 and pos == list(range(pos[0], pos[-1] + 1)):
        pos_text = f"{pos[0]}..{pos[-1]}"
    else:
        pos_text = ", ".join(map(str, pos[:8])) + (", ..." if len(pos) > 8 else "")
    plural = "" if len(pos) == 1 else "s"
    lines.append(f"tokens     {n_tok} (captured {len(pos)} position{plural}: {pos_text})")
    header = f"{'layer':>5}  {'shape':<12} {'L2 mean':>9} {'L2 min':>9} {'L2 max':>9}"
    lines.append(header)
    for layer in acts.layers:
        vec = acts.vectors[layer].float()
        norms = vec.norm(dim=-1)
        shape = "[" + ", ".join(str(s) for s in vec.shape) + "]"
        lines.append(f"{layer:>5}  {shape:<12} {norms.mean().item():>9.2f} {norms.min().item():>9.2f} "
                     f"{norms.max().item():>9.2f}")
    return "\n".join(lines)


def format_tokens(tokenizer: Any, acts: Any, *, width: int = 100) -> str:
    """The rendered context one token at a time (as TransformerLens's ``to_str_tokens``), captured ones in [ ].

    Template and special tokens are shown too, so what the model actually read (and which of it
    was captured) is visible.

    >>> from transformers import AutoTokenizer
    >>> from activation_oracles.embedded import embedded_dir
    >>> from activation_oracles.activations import Activations
    >>> import torch
    >>> tok = AutoTokenizer.from_pretrained(str(embedded_dir()))
    >>> ids = tuple(tok("Owls hunt.", add_special_tokens=False)["input_ids"])
    >>> acts = Activations(vectors={0: torch.zeros(1, 4)}, positions=(len(ids) - 1,), token_ids=ids,
    ...                    tokens=tuple(tok.convert_ids_to_tokens(list(ids))), model_name="m", n_layers=1, d_model=4)
    >>> print(format_tokens(tok, acts))
    text       'O'|'w'|'ls'|' hunt'|['.']
    """
    captured = set(acts.positions)
    pieces = []
    for i, t in enumerate(acts.token_ids):
        shown = repr(tokenizer.decode([t]))
        pieces.append(f"[{shown}]" if i in captured else shown)
    lines, line = [], "text       "
    for k, piece in enumerate(pieces):
        add = piece if k == 0 else "|" + piece
        if len(line) + len(add) > width and line.strip() != "text":
            lines.append(line + "|")
            line, add = "           ", piece
        line += add
    lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# ao capture
# ---------------------------------------------------------------------------------------------------

def _add_capture_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "capture", help="capture residual-stream activations of a prompt into a safetensors file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a model on a prompt, record the output of decoder blocks, print a summary and\n"
                    "(with --out) write the vectors with their provenance (model, layers, token ids,\n"
                    "positions, prompt) to a safetensors file that activation_oracles.Activations.load reads.",
        epilog="examples:\n"
               "  ao capture --prompt 'Tell me about owls.' --layers 15 --out acts.safetensors\n"
               "  ao capture --prompt 'The capital of France is' --no-chat --layers 7 15 22 --positions last:1")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text to run ('-' reads stdin).")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the activations here (safetensors). Without it, only the summary is printed.")
    _add_model_args(p)
    _add_capture_args(p)
    p.set_defaults(func=cmd_capture)


def cmd_capture(args: argparse.Namespace) -> int:
    prompt = read_prompt(args.prompt)
    if args.out is not None:  # fail before the (slow) model load
        parent = os.path.dirname(os.path.abspath(args.out))
        if os.path.isdir(args.out):
            raise CLIUsageError(f"--out {args.out!r} is a directory; pass a file path such as "
                                f"{os.path.join(args.out, 'acts.safetensors')!r}.")
        if not os.path.isdir(parent):
            raise CLIUsageError(f"--out {args.out!r}: folder {parent!r} does not exist; create it first "
                                "or pick another path.")
    check_device_arg(args.device)
    model = _load_model(args)
    acts = _capture(model, prompt, args)
    print(format_summary(acts, prompt=prompt))
    print(format_tokens(model.tokenizer, acts))
    if args.out is not None:
        path = acts.save(args.out)
        print(f"saved      {path} ({os.path.getsize(path) / 1024:.1f} KiB); read it with "
              f"activation_oracles.Activations.load({str(path)!r})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------
# ao demo
# ---------------------------------------------------------------------------------------------------

def _add_demo_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="a short offline tour on the embedded model (what `make demo` runs)",
        description="Load the embedded SmolLM2-135M-Instruct, capture its mid-depth residual stream on a "
                    "few prompts, and ask an oracle open and yes/no questions about them, with probabilities "
                    "beside the controls.")
    p.add_argument("--model", default="smollm2-135m", metavar="SPEC", help="model to use. Default: %(default)s.")
    p.add_argument("--oracle", default="smollm2-135m", metavar="SPEC",
                   help="oracle directory or shipped name. Default: %(default)s.")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """The oracle demo (:mod:`activation_oracles.demo`): answers and probabilities beside the controls."""
    from .demo import run_demo

    return run_demo(args.model, args.oracle)


# ---------------------------------------------------------------------------------------------------
# the parser and the entry point
# ---------------------------------------------------------------------------------------------------

#: One ``_add_<name>_parser`` per subcommand, in the order ``ao --help`` lists them.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_demo_parser,
    _add_capture_parser,
    _add_ask_parser,
    _add_train_parser,
    _add_data_parser,
    _add_organism_parser,
    _add_audit_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ao", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ao {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback on errors (for bug reports).")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for add in SUBCOMMANDS:
        add(subparsers)
    add_verbose_flag(parser)
    return parser


_VERBOSE_HELP = ("show the libraries' own warnings and progress bars (transformers, peft, huggingface_hub), "
                 "hidden by default.")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` on ``parser`` and on every subcommand under it, so ``ao -v ask`` and ``ao ask -v`` agree.

    The subcommands' copies default to ``SUPPRESS``: argparse lets a subparser's default overwrite
    the value the main parser already parsed, which would drop ``ao -v ask``.
    """
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    _add_verbose_to_subcommands(parser)


def _add_verbose_to_subcommands(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(p): p for p in action.choices.values()}.values():  # aliases share a parser
                if not any("--verbose" in a.option_strings for a in sub._actions):
                    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                     help=_VERBOSE_HELP)
                _add_verbose_to_subcommands(sub)


def command_context(args: argparse.Namespace) -> Any:
    """What every command runs inside: the libraries quiet unless ``--verbose``, our progress bars on.

    Both settings end with the command (nothing global stays changed), so ``main()`` called from
    Python leaves the caller's logging and warnings as they were.
    """
    from contextlib import ExitStack

    from .progress import progress_default
    from .verbosity import library_verbosity

    stack = ExitStack()
    stack.enter_context(library_verbosity(bool(getattr(args, "verbose", False))))
    stack.enter_context(progress_default(True))
    return stack


def run_command(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a subcommand handler; errors become one ``error:`` line and an exit status (see the module doc)."""
    show_traceback = bool(getattr(args, "traceback", False))
    try:
        status = int(func(args) or EXIT_OK)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except AOError as exc:
        if show_traceback:
            raise
        _err(f"error: {exc}")
        return int(getattr(exc, "exit_status", EXIT_USAGE))
    except OSError as exc:  # the disk or the OS refused (permissions, space): a runtime failure, not a bug
        if show_traceback:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _err(f"error: {exc.strerror or exc}{where}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if show_traceback:
            raise
        _err("interrupted")
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (pytest capture): nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ao`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: keep argparse's message and status
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    except BrokenPipeError:  # `ao --help | head -1`
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with command_context(args):
        return run_command(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
