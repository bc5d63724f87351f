"""``promptcouple train`` and ``promptcouple eval``; both run as is under ``torchrun``.

Examples::

    promptcouple train cfg.yaml --set optim.lr=2e-3 --set run.output_dir=runs/a
    torchrun --nproc_per_node=8 -m promptcouple train cfg.yaml --resume
    promptcouple eval runs/a                       # the run's own config.yaml and prompts
    promptcouple eval cfg.yaml --prompts runs/a/prompts.safetensors
    promptcouple eval cfg.yaml                     # zero-shot: the frozen backbone, no prompts
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from promptcouple.train.config import PROMPTS, load_config


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
    """Evaluate a prompt file on the evaluation sets of a run folder or a YAML config; zero-shot without prompts.

    Writes metrics.json and, per evaluation set, per-clip predictions (CSV), per-class accuracy (CSV)
    and a confusion-matrix plot into --out (default: eval/ beside the prompt file, or
    eval_zero_shot/ in run.output_dir).
    """
    parser = argparse.ArgumentParser(prog="promptcouple eval", description=eval_main.__doc__)
    parser.add_argument("config", nargs="?", default=None, metavar="RUN_OR_CONFIG",
                        help="a run folder (its config.yaml and prompts.safetensors) or a YAML config; "
                             "default: the run folder of --prompts")
    parser.add_argument("--prompts", default=None,
                        help="prompt file to evaluate (default: the run folder's; none with a YAML config: zero-shot)")
    parser.add_argument("--zero-shot", action="store_true",
                        help="evaluate the frozen backbone with the hand-crafted prompt, no prompt file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set eval.num_clips=2 (repeatable)")
    parser.add_argument("--out", default=None, metavar="DIR", help="folder of the reports (see above)")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    from promptcouple.train.evaluation import evaluate_config
    from promptcouple.train.run_info import load_run_config

    if args.zero_shot and args.prompts is not None:
        parser.error("--zero-shot evaluates without prompts; give either --zero-shot or --prompts")
    source = args.config if args.config is not None else args.prompts
    if source is None:
        parser.error("give a run folder, a YAML config, or --prompts of a prompt file in its run folder")
    prompts = args.prompts
    if os.path.isdir(source) or args.config is None:  # a run folder: its resolved config, its prompts
        cfg = load_run_config(source, args.overrides)
        if prompts is None and not args.zero_shot:
            prompts = os.path.join(source, PROMPTS)
    else:
        cfg = load_config(source, args.overrides)
    out = args.out
    if out is None:
        out = os.path.join(os.path.dirname(prompts) or ".", "eval") if prompts is not None else \
            os.path.join(cfg.run.output_dir, "eval_zero_shot")
    evaluate_config(cfg, prompts, output=args.output, report_dir=out)
    return 0
