"""``promptcouple train`` and ``promptcouple eval``; both run as is under ``torchrun``.

Examples::

    promptcouple train cfg.yaml --set optim.lr=2e-3 --set run.output_dir=runs/a
    torchrun --nproc_per_node=8 -m promptcouple train cfg.yaml --resume
    promptcouple eval cfg.yaml --prompts runs/a/prompts.safetensors
"""

from __future__ import annotations

import argparse
from typing import Optional

from promptcouple.train.config import load_config


def _parser(prog: str, doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("config", help="YAML config (see promptcouple.train.config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    return parser


def train_main(argv: Optional[list[str]] = None) -> int:
    """Train prompts from a YAML config."""
    parser = _parser("promptcouple train", train_main.__doc__)
    parser.add_argument("--resume", action="store_true",
                        help="continue from run.output_dir/checkpoint.pt (starts afresh if there is none)")
    args = parser.parse_args(argv)
    from promptcouple.train.trainer import train  # here: `--help` need not import torch

    # Errors propagate: promptcouple.cli.run_command turns them into one line and an exit status.
    results = train(load_config(args.config, args.overrides), resume=args.resume)
    return 0 if results.get("status") in ("finished", "stopped") else 1


def eval_main(argv: Optional[list[str]] = None) -> int:
    """Evaluate a prompt file on the evaluation sets of a YAML config."""
    parser = _parser("promptcouple eval", eval_main.__doc__)
    parser.add_argument("--prompts", required=True, help="prompt file (.safetensors) to evaluate")
    parser.add_argument("--output", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    from promptcouple.train.evaluation import evaluate_config

    evaluate_config(load_config(args.config, args.overrides), args.prompts, output=args.output)
    return 0
