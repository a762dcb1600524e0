"""Where payload log lines go: standard output, or a size-capped file rotated among processes.

Every HTTP process appends to the same file (O_APPEND: each write lands whole at the end). The
process that finds the file full rotates it under an flock on `<file>.lock`
(`<file>` -> `<file>.1` -> ... -> `<file>.<backups>`, the oldest deleted); the others notice the
new inode before their next write and reopen. So the file and its copies together stay within
`max_bytes` (plus at most one batch of lines per process), whatever the number of processes.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

STDOUT = "stdout"


class Sink(Protocol):
    @property
    def limit(self) -> int | None:
        """The largest line it takes (None: any)."""

    def write(self, lines: list[bytes]) -> None:
        """Write whole lines (each at most `limit`); OSError when they could not be written."""

    def close(self) -> None: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StdoutSink:
    """Lines to file descriptor 1 (a container's log). One write per batch of lines; from several
    processes, lines over the pipe's atomic size (4 KiB) may interleave: use a file for those."""

    limit: int | None = None

    def write(self, lines: list[bytes]) -> None:
        _write_all(1, b"".join(lines))

    def close(self) -> None:
        pass


class RotatingFile:
    """Appends to `path`, rotated when full; shared safely by the processes of one server."""

    def __init__(self, path: str | Path, max_bytes: int, backups: int = 3) -> None:
        if backups < 1:
            raise ValueError("a rotating file keeps at least one rotated copy")
        self.path = Path(path)
        self.backups = backups
        self.limit: int = max(1, max_bytes // (backups + 1))  # per file: the cap covers all copies
        self._fd: int | None = None
        self._ino = 0

    def write(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:  # as few writes as fit in a file
            if len(line) > self.limit:
                raise ValueError(f"a line of {len(line)} bytes does not fit a log file of {self.limit} bytes")
            if size + len(line) > self.limit:
                self._append(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._append(b"".join(chunk))

    def _append(self, data: bytes) -> None:
        fd = self._current()
        if os.fstat(fd).st_size + len(data) > self.limit:
            fd = self._rotate()
        _write_all(fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        self.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        return fd

    def _current(self) -> int:
        """Our descriptor, reopened if another process rotated the file away since."""
        if self._fd is None:
            return self._open()
        try:
            if os.stat(self.path).st_ino == self._ino:
                return self._fd
        except FileNotFoundError:  # rotated, and the new one not made yet
            pass
        return self._open()

    def _rotate(self) -> int:
        lock = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:  # under the lock: only if no other process rotated it meanwhile
                st = os.stat(self.path)
                if st.st_ino == self._ino and st.st_size > 0:
                    for i in range(self.backups - 1, 0, -1):
                        older = Path(f"{self.path}.{i}")
                        if older.exists():
                            older.replace(f"{self.path}.{i + 1}")
                    self.path.replace(f"{self.path}.1")
            except FileNotFoundError:
                pass
            return self._open()
        finally:
            os.close(lock)  # closing releases the flock


def open_sink(destination: str, max_bytes: int) -> Sink:
    return StdoutSink() if destination == STDOUT else RotatingFile(destination, max_bytes)
