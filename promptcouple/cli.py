"""promptcouple: prompt-tune CLIP-style video models the GA2-CLIP way, evaluate them, classify videos.

Typical use: `promptcouple train cfg.yaml`, then `promptcouple eval runs/NAME` and
`promptcouple predict clip.mp4 --prompts runs/NAME/prompts.safetensors`.
`promptcouple COMMAND --help` describes each command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from typing import Callable, Iterator, Optional

# subcommand -> (where its body is, one-line help). A new subcommand is one line here and one module
# of promptcouple.commands whose `main(argv) -> int` is the body ("module:function" names another
# function). Imported lazily so that `--help` stays fast.
COMMANDS = {
    "train": ("promptcouple.commands.train", "train prompts from a YAML config (torchrun-ready)"),
    "eval": ("promptcouple.commands.eval", "evaluate prompts (or zero-shot) on a run's or a config's data"),
    "predict": ("promptcouple.commands.predict", "classify a video file or a folder of videos with a prompt file"),
    "inspect": ("promptcouple.commands.inspect", "print the config, shapes, class names and backbone of a prompt file"),
    "convert": ("promptcouple.commands.convert", "convert a GA2-CLIP / ViFi-CLIP checkpoint into a prompt file"),
    "split": ("promptcouple.commands.split", "base/novel class splits and K-shot training lists"),
    "push": ("promptcouple.commands.push", "upload a prompt file with a generated model card to the Hugging Face Hub"),
    "merge": ("promptcouple.commands.merge", "fold a coupled prompt file's context into a plain prompt file"),
    "export": ("promptcouple.commands.export", "export a prompt file and its classes as an ONNX video classifier"),
    "demo": ("promptcouple.commands.demo", "a web page (Gradio) to try prompt files on a video"),
}


def main(argv: list[str] | None = None) -> int:
    from promptcouple.commands import CommandParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = CommandParser(prog="promptcouple", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="commands:\n" + "\n".join(f"  {k:<9} {v[1]}" for k, v in COMMANDS.items()))
    parser.add_argument("--version", action="version", version=f"promptcouple {_version()}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: PROMPTCOUPLE_DEBUG=1)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] == "--version":
        print(f"promptcouple {_version()}")
        return 0
    debug = "--debug" in argv or os.environ.get("PROMPTCOUPLE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]

    def command() -> Optional[int]:
        module, _, function = COMMANDS[parser.parse_args(argv[:1]).command][0].partition(":")
        return getattr(importlib.import_module(module), function or "main")(argv[1:])

    prog = f"promptcouple {argv[0]}" if argv and argv[0] in COMMANDS else "promptcouple"
    with log_to_stdout():
        return run_command(prog, command, debug=debug)


def _version() -> str:
    from promptcouple import __version__

    return __version__


def run_command(prog: str, command: Callable[[], Optional[int]], *, debug: bool = False) -> int:
    """Run a subcommand; an error reaches the user as one line on stderr and an exit status.

    A :class:`~promptcouple.errors.PromptcoupleError` exits with its ``exit_status`` (2: what the
    command was given, 1: a fault while running); any other exception is a fault (1), reported
    by its type and message. ``debug`` (``--debug``, ``PROMPTCOUPLE_DEBUG=1``) re-raises instead,
    so the traceback shows.
    """
    from promptcouple.commands import UsageError
    from promptcouple.errors import PromptcoupleError

    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 (the one place that turns errors into exit statuses)
        if debug:
            raise
        expected = isinstance(err, PromptcoupleError)
        # OSError and the like are the user's too (a full disk, a file without permission) but carry
        # no hint of where they came from: their type says what happened.
        text = str(err) if expected else f"{type(err).__name__}: {err}"
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
        # A usage error has no traceback worth showing; it says which --help to read instead.
        hint = "" if isinstance(err, UsageError) else " (--debug or PROMPTCOUPLE_DEBUG=1 shows the traceback)"
        print(f"{prog}: error: {text}{hint}", file=sys.stderr)
        return err.exit_status if expected else 1


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
