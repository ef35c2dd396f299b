"""``ao train``: train an activation oracle from a config file, a preset and ``--set`` overrides.

The lead CLI lists :func:`add_train_parser` in its subcommands; ``python -m
activation_oracles.training`` (and ``torchrun ... -m activation_oracles.training``)
takes the same options without the ``train`` word. Nothing heavy is imported until
:func:`cmd_train` runs.

Resolution order: the preset (or the defaults), then the ``--config`` file, then each
``--set key=value`` in order, then ``--out``.

>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> add_train_parser(sub)
>>> a = p.parse_args(["train", "--preset", "tiny", "--set", "optim.lr=1e-3", "--out", "runs/x"])
>>> a.preset, a.overrides, a.out
('tiny', ['optim.lr=1e-3'], 'runs/x')
"""

from __future__ import annotations

import argparse
from typing import Any

PRESET_NAMES = ("tiny", "smollm2-135m")

_EPILOG = """\
examples:
  ao train --preset tiny --out runs/tiny                      # CI smoke run, < 1 minute
  ao train --preset smollm2-135m --out runs/smollm            # the embedded model's oracle (~1 h on CPU)
  ao train --config my.toml --set optim.lr=3e-5 --set data.n_examples=200000
  ao train --config my.toml --out runs/mine --resume          # continue after a crash or a kill
  torchrun --nproc_per_node 4 -m activation_oracles.training --config my.toml --out runs/ddp

Config keys (TOML sections [model], [lora], [optim], [data] with [[data.sources]],
[checkpoint], [eval], [output]) are listed with --list-keys."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ao train`` (shared with ``python -m activation_oracles.training``)."""
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML config (applied on top of --preset).")
    parser.add_argument("--preset", choices=PRESET_NAMES, help="start from a named preset.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set optim.lr=1e-4 or --set data.sources.0.weight=2 "
                             "(repeatable; values in TOML syntax, bare words are strings).")
    parser.add_argument("--out", metavar="DIR", help="output directory (overrides output.dir).")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest valid "
                                                              "checkpoint.")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out.")
    parser.add_argument("--list-keys", action="store_true", help="print every config key with its help and exit.")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit.")


def add_train_parser(subparsers: Any) -> None:
    """Register ``train`` on the ``ao`` subparsers, bound to :func:`cmd_train`."""
    parser = subparsers.add_parser("train", help="train an activation oracle (LoRA) for a model",
                                   description=__doc__.split("\n\n")[0], epilog=_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=cmd_train)


def resolve_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` the arguments describe."""
    from dataclasses import replace

    from ..errors import ConfigError
    from .config import TrainConfig, apply_overrides
    from .presets import preset

    if not args.config and not args.preset:
        raise ConfigError("give --config FILE or --preset NAME (tiny or smollm2-135m); e.g. "
                          "`ao train --preset tiny --out runs/tiny`.")
    cfg = preset(args.preset) if args.preset else TrainConfig()
    if args.config:
        cfg = TrainConfig.load(args.config, base=cfg)
    if args.overrides:
        cfg = apply_overrides(cfg, args.overrides)
    if args.out:
        cfg = replace(cfg, output=replace(cfg.output, dir=str(args.out)))
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``ao train``; returns the exit status (errors raise :class:`~activation_oracles.errors.AOError`)."""
    if getattr(args, "list_keys", False):
        from .config import field_help

        for key, text in field_help():
            print(f"{key:28s} {text}")
        return 0
    cfg = resolve_config(args)
    if getattr(args, "print_config", False):
        print(cfg.to_toml(), end="")
        return 0
    # Checked before the model loads, so a bad --out or device fails in a second, with nothing written.
    from ..checks import check_device, check_writable_dir

    check_writable_dir("--out" if args.out else "output.dir", cfg.output.dir)
    if cfg.model.device != "auto":
        check_device(cfg.model.device)
    from .trainer import Trainer

    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    try:
        result = trainer.train()
    finally:
        _finish_distributed()
    if trainer.dist.is_main:
        print(f"trained {result.steps} steps on {result.examples} examples in {result.wall_time_s:.1f} s "
              f"({result.tokens_per_s:.0f} oracle tokens/s); oracle directory: {result.out_dir}")
    return 0


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """``python -m activation_oracles.training [options]`` (also under ``torchrun``)."""
    from ..cli import add_verbose_flag, command_context, run_command  # here: activation_oracles.cli imports us

    parser = argparse.ArgumentParser(prog="python -m activation_oracles.training",
                                     description="Train an activation oracle.", epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors.")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    with command_context(args):
        return run_command(cmd_train, args)
