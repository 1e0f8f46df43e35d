"""One service per storage folder: an exclusive lock on STORAGE/genad.lock, taken before the
database or any job is touched and held for as long as the service lives.

    lock = StorageLock.acquire(storage_dir)     # StorageBusy if another service holds it
    ...
    lock.release()

A second `genad serve` on the same storage therefore stops at start-up with one line ("another
genad service (pid N) uses storage DIR") instead of marking the first one's running jobs
interrupted and running them a second time. The lock is an advisory `flock` on an open file:
the kernel drops it when the process ends, however it ends (a crash or `kill -9` leaves no
stale lock behind). The file holds the pid of the holder, for that message only.

Where `flock` is not available (Windows) the lock is a no-op: run one service per storage.
"""

from __future__ import annotations

import os
from pathlib import Path

from genad.errors import GenadError

LOCK_NAME = "genad.lock"


class StorageBusy(GenadError):
    """Another service process holds the storage folder's lock."""


class StorageLock:
    """An exclusive, process-wide lock on a storage folder (see the module doc)."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, storage_dir: Path, what: str = "storage") -> StorageLock:
        """Lock `storage_dir` (created if missing); StorageBusy if another process holds it."""
        storage_dir = Path(storage_dir)
        storage_dir.mkdir(parents=True, exist_ok=True)
        path = storage_dir / LOCK_NAME
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return cls(path, None)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise GenadError(f"cannot open the lock file of {what} {storage_dir} ({e.strerror})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise StorageBusy(
                f"another genad service ({who}) uses {what} {storage_dir}: stop it first, or give this one "
                "another --storage folder"
            ) from None
        try:  # who holds it, for the message above (the lock is the flock, not this text)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (closing the file releases the flock). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)

    def __del__(self) -> None:  # an app that was never started still lets go when collected
        try:
            self.release()
        except Exception:
            pass


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
