"""The `promptcouple` command: one subcommand per task, each implemented beside the code it drives."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from typing import Iterator

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
    with log_to_stdout():
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


@contextlib.contextmanager
def log_to_stdout(level: int = logging.INFO) -> Iterator[None]:
    """Show the package's log records (progress, results) on stdout as plain lines during a command.

    The library only logs (to the ``promptcouple`` logger and its children) and leaves handlers
    to the application; the command line is that application. The handler is removed afterwards,
    so calling :func:`main` in a Python session leaves its logging as it was.
    """
    logger = logging.getLogger("promptcouple")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


if __name__ == "__main__":
    sys.exit(main())
