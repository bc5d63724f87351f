"""The command line's layer: one module per ``promptcouple`` subcommand, holding its body.

A subcommand is two pieces: one line in :data:`promptcouple.cli.COMMANDS` (its name, this
package's module and a one-line help) and that module's ``main(argv) -> int``, which parses the
arguments with :func:`command_parser`, calls the library, and prints what the user asked to see.
The library modules compute, return data and raise the typed errors of :mod:`promptcouple.errors`;
only this layer and :mod:`promptcouple.cli` print (``tests/test_architecture.py`` checks it).
:func:`promptcouple.cli.run_command` turns an error into one line on stderr and an exit status.
"""

from __future__ import annotations

import argparse
from typing import Any

from promptcouple.errors import InvalidInputError


class UsageError(InvalidInputError):
    """Arguments argparse refuses (an unknown option, a missing or malformed value); exit status 2."""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`UsageError` s, not usage text and ``SystemExit``.

    argparse prints the usage block and the error on two or more lines and exits; raised instead,
    the error reaches :func:`promptcouple.cli.run_command`, which prints the one line every other
    error gets. ``--help`` still prints the full usage.
    """

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message}; `{self.prog} --help` lists the arguments")


def command_parser(name: str, description: str | None = None, **kwargs: Any) -> CommandParser:
    """The argument parser of ``promptcouple NAME`` (sub-parsers inherit its one-line errors)."""
    return CommandParser(prog=f"promptcouple {name}", description=description, **kwargs)
