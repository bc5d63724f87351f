"""The package's errors: one small hierarchy under :class:`PromptcoupleError`.

Every error a user can cause (a bad file, config value, argument or input tensor) is one of these;
its message says what was found, what was expected and what to do, and names the file, key, line or
argument. Each class also subclasses the built-in type it replaces (``ValueError``, ``TypeError``,
``FileNotFoundError``, ...), so ``except ValueError`` written before the hierarchy existed still
catches what it caught.

The command line prints one line ``promptcouple CMD: error: MESSAGE`` and exits with
:attr:`PromptcoupleError.exit_status`: 2 for what the command was given (usage), 1 for what went
wrong while running. ``--debug`` or ``PROMPTCOUPLE_DEBUG=1`` shows the traceback instead.

::

    PromptcoupleError
    ├── InvalidInputError (ValueError)        a value, list or tensor that cannot be used
    │   ├── ConfigError                       a training config (promptcouple.train)
    │   ├── ListFormatError                   a video list or label CSV (promptcouple.data)
    │   ├── AnchorOverlapError                anchor labels that name training classes
    │   ├── PromptFileError                   a prompt file or hard prompt
    │   └── CheckpointError                   a reference or training checkpoint
    │       └── BackboneLoadError             weights that do not fit the model
    ├── InvalidTypeError (TypeError)          an argument of the wrong type or dtype
    │   └── UnsupportedHostError              a model no adapter serves
    ├── MissingFileError (FileNotFoundError)  a named input file that does not exist
    ├── OutputConflictError (FileExistsError) an output that would overwrite an input or a run
    └── RunError (RuntimeError)               exit status 1: a fault while running
        ├── RunLockedError                    another run is writing the same folder
        ├── TrainingDivergedError (FloatingPointError)  a loss that is NaN or infinite
        └── VideoDecodeError                  a video that cannot be decoded
"""

from __future__ import annotations

__all__ = ["PromptcoupleError", "InvalidInputError", "ConfigError", "ListFormatError", "AnchorOverlapError",
           "PromptFileError", "CheckpointError", "BackboneLoadError", "InvalidTypeError", "UnsupportedHostError",
           "MissingFileError", "OutputConflictError", "RunError", "RunLockedError", "TrainingDivergedError",
           "VideoDecodeError"]


class PromptcoupleError(Exception):
    """Base of every error the package raises on purpose; the message is meant for the user."""

    #: Exit status of the command line: 2 for bad usage or input, 1 for a fault while running.
    exit_status = 2

    def __str__(self) -> str:
        # OSError subclasses format (errno, strerror) pairs; these carry one message.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InvalidInputError(PromptcoupleError, ValueError):
    """A value, list, file content or tensor that cannot be used as given."""


class ConfigError(InvalidInputError):
    """A config that cannot run; the message names the key and the fix."""


class ListFormatError(InvalidInputError):
    """A malformed line in a list or label file; the message names the file and line."""


class AnchorOverlapError(InvalidInputError):
    """Anchor labels that are also training or evaluation classes (they would leak those classes)."""


class PromptFileError(InvalidInputError):
    """A prompt file or hard prompt that is not what it should be (key, shape, dtype, values, metadata)."""


class CheckpointError(InvalidInputError):
    """A checkpoint that cannot be read or converted; the message says what was found and the fix."""


class BackboneLoadError(CheckpointError):
    """The checkpoint's backbone does not fit the model; the message lists every problem."""


class InvalidTypeError(PromptcoupleError, TypeError):
    """An argument of the wrong type or dtype."""


class UnsupportedHostError(InvalidTypeError):
    """A model no adapter serves, or one an adapter cannot serve; the message says why."""


class MissingFileError(PromptcoupleError, FileNotFoundError):
    """An input file or folder named by the user that does not exist."""


class OutputConflictError(PromptcoupleError, FileExistsError):
    """An output that would overwrite an input, a directory, or another run's results."""


class RunError(PromptcoupleError, RuntimeError):
    """A fault while running (not in what the command was given)."""

    exit_status = 1


class RunLockedError(RunError):
    """Another process holds the run folder's lock."""


class TrainingDivergedError(RunError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the fix."""


class VideoDecodeError(RunError):
    """A video file that cannot be opened or decoded."""
