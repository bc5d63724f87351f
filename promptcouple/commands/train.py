"""``promptcouple train CONFIG [--set KEY=VALUE] [--resume]``; runs as is under ``torchrun``.

Examples::

    promptcouple train cfg.yaml --set optim.lr=2e-3 --set run.output_dir=runs/a
    torchrun --nproc_per_node=8 -m promptcouple train cfg.yaml --resume
"""

from __future__ import annotations

import argparse
from typing import Optional

from promptcouple.commands import command_parser


def add_overrides(parser: argparse.ArgumentParser, example: str = "optim.lr=1e-3") -> None:
    """The repeatable ``--set KEY=VALUE`` of the commands that read a training config."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable)")


def main(argv: Optional[list[str]] = None) -> int:
    """Train prompts from a YAML config."""
    parser = command_parser("train", main.__doc__)
    parser.add_argument("config", help="YAML config (see docs/CONFIG.md)")
    add_overrides(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from run.output_dir/checkpoint.pt (starts afresh if there is none)")
    args = parser.parse_args(argv)
    from promptcouple.train.config import load_config  # here: `--help` need not import torch
    from promptcouple.train.trainer import train

    # Errors propagate: promptcouple.cli.run_command turns them into one line and an exit status.
    results = train(load_config(args.config, args.overrides), resume=args.resume)
    return 0 if results.get("status") in ("finished", "stopped") else 1
