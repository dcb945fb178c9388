"""One trainer per work dir: a lock file holding the owner's PID.

`otseg train` takes `WORK_DIR/train.lock` before it writes anything there. The lock is an advisory `flock` on
that file (released by the kernel when the process ends, however it ends), and the file holds the owner's PID
and host, so a second trainer can say who holds the directory. A lock file left by a killed run is free (its
`flock` went with the process) and is simply taken over. Where `fcntl` does not exist (Windows), the PID in the
file decides: a lock whose process is no longer running is taken over.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

from otseg.errors import BadValueError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "WorkDirBusyError", "WorkDirLock"]

LOCK_NAME = "train.lock"
_REOPEN_ATTEMPTS = 20  # a lock file replaced this many times in a row while we take it: someone else is busy there


class WorkDirBusyError(BadValueError):
    """Another live process holds the work dir's lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_owner(path: Path) -> tuple[int, str]:
    """(PID, host) written in a lock file; (0, "") when it holds nothing readable."""
    try:
        fields = path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return 0, ""
    try:
        pid = int(fields[0]) if fields else 0
    except ValueError:
        pid = 0
    return pid, fields[1] if len(fields) > 1 else ""


class WorkDirLock:
    """Exclusive ownership of a training work dir for the life of this object (a context manager).

    Attributes:
        path: the lock file, `work_dir/train.lock`.
        took_over: the PID of a dead previous owner whose lock was taken over, else None.
    """

    def __init__(self, work_dir: str | os.PathLike[str]) -> None:
        self.path = Path(work_dir) / LOCK_NAME
        self.took_over: int | None = None
        self._fd: int | None = None

    def acquire(self) -> WorkDirLock:
        """Take the lock or raise `WorkDirBusyError` naming the PID that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous_pid, _ = _read_owner(self.path)
        if fcntl is not None:
            fd = self._flock_current_file(previous_pid)
        else:  # pragma: no cover - Windows: O_EXCL creation, the PID decides staleness
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid, host = _read_owner(self.path)
                if _pid_alive(pid) or (host and host != socket.gethostname()):
                    raise self._busy(pid, host) from None
                self.path.unlink(missing_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        if previous_pid and previous_pid != os.getpid():
            self.took_over = previous_pid
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _flock_current_file(self, previous_pid: int) -> int:
        """A descriptor of the lock file, flock'ed, that is still the file at `self.path`.

        A releasing owner unlinks the file while it holds the flock, then closes it. Whoever opened the old file
        before the unlink gets that flock once the owner closes, on a file no longer in the directory, while a
        third process may already hold a new file at the path: two owners. So after taking the flock, the file
        must still be the one at the path (same device and inode); otherwise it is dropped and the path opened
        again. The lock file is opened without following a link planted at its name.
        """
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(_REOPEN_ATTEMPTS):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                raise WorkDirBusyError(
                    f"cannot open the lock file {self.path} ({exc.strerror}); if it is a link or a folder, remove it"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid, host = _read_owner(self.path)
                raise self._busy(pid or previous_pid, host) from None
            held = os.fstat(fd)
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return fd
            os.close(fd)  # the file was released and unlinked in between: lock the one at the path now
        raise WorkDirBusyError(
            f"work dir {self.path.parent}: the lock file {self.path} kept being replaced while taking it; another "
            "otseg train is starting or stopping there: try again"
        )

    def _busy(self, pid: int, host: str) -> WorkDirBusyError:
        who = f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid else "a process"
        return WorkDirBusyError(
            f"work dir {self.path.parent} is in use by another otseg train ({who}, lock file {self.path}); wait for "
            "it to finish, stop it, or give another --work-dir"
        )

    def release(self) -> None:
        """Give the lock up and remove the lock file.

        The file is unlinked while the flock is still held, then closed: a process that opened it before the
        unlink and gets the flock after the close sees that the file is no longer at the path and opens the path
        again (`_flock_current_file`), so it never shares the work dir with one that created a new lock file.
        (Closing first and unlinking after would remove a file another process may already hold.)
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> WorkDirLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
