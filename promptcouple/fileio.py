"""Writing files so that a crash never leaves half of one: the one atomic write of the package.

Every output (prompt files, checkpoints, results, logs rewritten on resume, benchmark JSON) goes
through :func:`atomic_write`: the data is written to a temporary file in the target's folder,
flushed to disk, then renamed over the target, which POSIX and Windows do atomically. A failure at
any point leaves the previous file untouched and removes the temporary one; temporaries left by a
killed process (``kill -9`` cannot clean up) are removed by the next write to the same target.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

_TMP_MARK = ".tmp-"


def temporary_name(path: Path) -> Path:
    """The temporary file this process writes before renaming it to ``path``."""
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")


def stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of ``path`` left by processes that no longer run."""
    stale = []
    for candidate in path.parent.glob(f".{path.name}{_TMP_MARK}*"):
        pid = candidate.name.rsplit(_TMP_MARK, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            stale.append(candidate)
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` atomically.

    Example::

        with atomic_write("results.json", "w") as f:
            json.dump(results, f)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name to write to")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        stale.unlink(missing_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        # Files are created with the umask's permissions, as any other program's outputs.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_safetensors(path: PathLike, tensors: dict, metadata: Optional[dict] = None) -> None:
    """Write a ``.safetensors`` file through :func:`atomic_write`.

    The file is serialised in memory and written through the temporary's own handle: safetensors'
    ``save_file`` would create the file anew by name (mode 0600, ignoring the umask, and outside
    the handle that is flushed and fsynced before the rename).
    """
    from safetensors.torch import save

    with atomic_write(path, "wb") as f:
        f.write(save(tensors, metadata=metadata))


def _fsync_dir(directory: Path) -> None:
    # Persist the rename itself; not possible (nor needed) on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
