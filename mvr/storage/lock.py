"""One writer per index name, between processes: ``fcntl.flock`` on a lock file beside the index
(storage/layout.py says what else lives there)."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ..errors import ConfigError, IndexLockedError, is_number, shown


class WriterLock:
    """The one-writer-per-name lock: ``fcntl.flock`` on ``FOLDER/.NAME.lock``, which holds the
    holder's PID. The kernel drops the lock when its holder dies, so a file left by a killed
    writer blocks nobody; :meth:`release` removes the file while still holding it, and
    :meth:`try_acquire` retries when the file it locked was removed meanwhile, so two writers can
    never hold two different files of one name."""

    def __init__(self, folder: Path, name: str, label: str | None = None):
        self.path = Path(folder) / f".{name}.mvr-lock"  # a suffix of mvr's own: never another program's lock
        self.name = name
        self.label = label or f"index {name!r}"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                here, locked = os.stat(self.path), os.fstat(fd)
                if (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    self._fd = fd
                    continue
            except BlockingIOError:
                os.close(fd)
                return False
            except FileNotFoundError:  # removed by the holder that released it: lock the new one
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        return True

    def acquire(self, wait: float = 0.0) -> "WriterLock":
        """Take the lock, waiting up to ``wait`` seconds for its holder; else :class:`IndexLockedError`."""
        check_wait(wait)
        deadline = time.monotonic() + wait
        while not self.try_acquire() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.held:
            pid = self.holder()
            who = f"PID {pid}" if pid else "another process"
            raise IndexLockedError(
                f"{self.label} is being written by {who}; wait for it to finish (--wait SECONDS; wait= in Python and over HTTP) or stop that process, then run this again "
                f"(mvr lets one process at a time write a name; lock file {self.path})."
            )
        return self

    def holder(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def index_lock(path: Path, label: str, wait: float = 0.0) -> WriterLock:
    """The writer lock of the index folder at ``path``, taken beside the folder it resolves to, so
    that every way to one index (a symlink, its target) takes one lock: two writers would otherwise
    take the same segment name and collect each other's files. Beside ``path`` itself where the
    resolved folder's parent cannot be written (a link from a writable home to an index in a
    read-only folder: no writer could take the lock there)."""
    given = Path(path)
    real = given.resolve()
    try:
        return WriterLock(real.parent, real.name, label).acquire(wait)
    except OSError as error:
        if real == given.absolute() or error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        return WriterLock(given.parent, given.name, label).acquire(wait)


def check_wait(wait) -> None:
    """A ConfigError unless ``wait`` is a finite number of seconds >= 0."""
    if not is_number(wait) or not 0 <= wait < float("inf"):
        raise ConfigError(f"wait is the seconds to wait for another writer: a number >= 0, got {shown(wait)}.")
