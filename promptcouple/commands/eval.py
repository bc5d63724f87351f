"""``promptcouple eval``: prompts (or zero-shot) on the evaluation sets of a run folder or a config.

Examples::

    promptcouple eval runs/a                       # the run's own config.yaml and prompts
    promptcouple eval cfg.yaml --prompts runs/a/prompts.safetensors
    promptcouple eval cfg.yaml                     # zero-shot: the frozen backbone, no prompts
"""

from __future__ import annotations

import os
from typing import Optional

from promptcouple.commands import command_parser
from promptcouple.commands.train import add_overrides


def main(argv: Optional[list[str]] = None) -> int:
    """Evaluate a prompt file on the evaluation sets of a run folder or a YAML config; zero-shot without prompts.

    Writes metrics.json and, per evaluation set, per-clip predictions (CSV), per-class accuracy (CSV)
    and a confusion-matrix plot into --out (default: eval/ beside the prompt file, or
    eval_zero_shot/ in run.output_dir).
    """
    parser = command_parser("eval", main.__doc__)
    parser.add_argument("config", nargs="?", default=None, metavar="RUN_OR_CONFIG",
                        help="a run folder (its config.yaml and prompts.safetensors) or a YAML config; "
                             "default: the run folder of --prompts")
    parser.add_argument("--prompts", nargs="+", default=None, metavar="FILE",
                        help="prompt file to evaluate (default: the run folder's; none with a YAML config: zero-shot); "
                             "several files trained on one backbone: built once, one table row per file")
    parser.add_argument("--zero-shot", action="store_true",
                        help="evaluate the frozen backbone with the hand-crafted prompt, no prompt file")
    add_overrides(parser, "eval.num_clips=2")
    parser.add_argument("--out", default=None, metavar="DIR", help="folder of the reports (see above)")
    parser.add_argument("--output", default=None, metavar="FILE.json", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    from promptcouple.train.config import PROMPTS, load_config  # here: `--help` need not import torch
    from promptcouple.train.evaluation import check_output_file, check_report_dir, evaluate_config
    from promptcouple.train.run_info import load_run_config

    if args.zero_shot and args.prompts is not None:
        parser.error("--zero-shot evaluates without prompts; give either --zero-shot or --prompts")
    several = args.prompts is not None and len(args.prompts) > 1
    source = args.config if args.config is not None else (args.prompts[0] if args.prompts else None)
    if source is None:
        parser.error("give a run folder, a YAML config, or --prompts of a prompt file in its run folder")
    # Output paths first: a wrong one is known before the model is built and every set is scored.
    if args.output is not None:
        check_output_file(args.output, "--output")
    if args.out is not None:
        check_report_dir(args.out, "--out")
    prompts = args.prompts if several else (args.prompts[0] if args.prompts else None)
    if os.path.isdir(source) or args.config is None:  # a run folder: its resolved config, its prompts
        cfg = load_run_config(source, args.overrides)
        if prompts is None and not args.zero_shot:
            prompts = os.path.join(source, PROMPTS)
    else:
        cfg = load_config(source, args.overrides)
    out = args.out
    if out is None and several:  # each file's reports beside it, as for one file; a sub-folder each where they share one
        from promptcouple.predict import prompt_set_names

        out = [os.path.join(_folder_of(p), "eval") for p in prompts]
        if len(set(out)) < len(out):
            out = [os.path.join(folder, name) for folder, name in zip(out, prompt_set_names(prompts))]
    elif out is None:
        out = os.path.join(_folder_of(prompts), "eval") if prompts is not None else \
            os.path.join(cfg.run.output_dir, "eval_zero_shot")
    evaluate_config(cfg, prompts, output=args.output, report_dir=out)
    return 0


def _folder_of(prompts: str) -> str:
    """Where a prompt source's reports go by default: the folder itself, or the one holding the file."""
    return str(prompts) if os.path.isdir(prompts) else (os.path.dirname(str(prompts)) or ".")
