"""Process-tree CPU and memory from /proc (Linux), for benchmarks of servers we started."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):  # the process may have exited meanwhile
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pid: int) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in children(pid)}


def rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE / 2**20
    except OSError:
        return 0.0


def command_line(pid: int) -> str:
    """The whole command line (roles are told from it: never cut it, paths vary in length)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def name(pid: int) -> str:
    """The command line, cut for display."""
    return command_line(pid)[:80]


def _listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on TCP `port` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found.add(int(f[9]))
    return found


def open_files(pid: int) -> list[str]:
    """What `pid`'s file descriptors point at (paths, 'socket:[...]', 'pipe:[...]')."""
    found = []
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                found.append(os.readlink(fd))
    return found


def _socket_inodes(pid: int) -> set[int]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def serves_unix_socket(pid: int) -> bool:
    """Whether `pid` holds a listening Unix socket (a multiprocessing Manager does)."""
    listening = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            f = line.split()
            if int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON: a listening socket
                listening.add(int(f[6]))
    return bool(_socket_inodes(pid) & listening)


def holders(root: int, port: int) -> set[int]:
    """The processes of `root`'s tree that hold a socket listening on `port`."""
    listening = _listening_inodes(port)
    return {pid for pid in children(root) if _socket_inodes(pid) & listening} if listening else set()


def port_owner(root: int, port: int) -> str:
    """'ours' if `root` or a descendant listens on `port`, 'other' if only someone else does,
    'none' if nobody listens yet."""
    if not _listening_inodes(port):
        return "none"
    return "ours" if holders(root, port) else "other"
