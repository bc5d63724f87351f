"""One run per output folder: a lock that a second run into the same folder is refused by.

Two runs writing one folder would interleave their logs and overwrite each other's checkpoints and
prompts. The lock is an advisory ``flock`` on a file in the folder, held from before the run
writes anything until it ends: the kernel drops it when the process dies (even by ``kill -9``),
so a killed run never leaves a stale lock behind, and the file itself is removed at release.
Platforms without ``fcntl`` (Windows) run unlocked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

from promptcouple.errors import OutputConflictError, RunLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

LOCK_NAME = ".promptcouple.lock"


class RunLock:
    """The lock of one run folder: ``acquire()`` before writing, ``release()`` at the end."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock, creating the folder if needed.

        Raises:
            OutputConflictError: The folder's path is a file.
            RunLockedError: Another process holds the lock (its pid and host are named).
        """
        if self.held:
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputConflictError(f"run.output_dir {str(self.folder)!r} is a file, expected a folder to write the "
                                      "run into; choose another run.output_dir")
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(
                    f"run.output_dir {str(self.folder)!r} is in use by another run (process {holder}, lock "
                    f"{self.path}); wait for it to end, or choose another run.output_dir") from None
            # The previous holder may have removed the file between our open and our lock: then
            # we hold a lock on a file nobody else sees, and must start again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __del__(self) -> None:
        # A Trainer dropped without fit() must not keep its folder locked for the process's life.
        try:
            self.release()
        except Exception:  # noqa: BLE001 (interpreter shutdown: nothing left to do)
            pass

    def release(self) -> None:
        """Remove the lock file and drop the lock (in this order: no one can take a lock on a file
        that is about to disappear)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
