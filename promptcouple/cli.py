"""The `promptcouple` command: one subcommand per task, each implemented beside the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function taking argv, one-line help). Imported lazily so `--help` stays fast.
COMMANDS = {
    "convert": ("promptcouple.convert", "cli_main", "convert a GA2-CLIP / ViFi-CLIP checkpoint into a prompt file"),
    "inspect": ("promptcouple.io", "cli_main", "print the config, shapes and metadata of a prompt file"),
    "train": ("promptcouple.train.cli", "train_main", "train prompts from a YAML config (torchrun-ready)"),
    "eval": ("promptcouple.train.cli", "eval_main", "evaluate prompts from a YAML config"),
    "split": ("promptcouple.data.splits", "cli_main", "base/novel class splits and K-shot training lists"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="promptcouple", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[2]}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    module, func, _ = COMMANDS[args.command]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
