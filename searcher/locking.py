"""One writer at a time per library: an advisory lock file (``fcntl.flock``).

Readers (query, info, duplicates) never take it: SQLite's WAL mode and the
atomically replaced FAISS files give them a consistent view while a writer works.
The lock dies with its process, so a killed ``searcher index`` never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class LibraryLocked(RuntimeError):
    """Another process is writing to this library."""


class WriteLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds (``inf`` waits forever)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LibraryLocked(
                        f"another searcher process{holder} is writing to this library; wait for it to "
                        "finish, or pass --wait SECONDS to queue behind it"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return f" (pid {text})" if text.isdigit() else ""
    except OSError:
        return ""
