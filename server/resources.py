"""What this process may use: CPUs and memory, container limits included.

Inside a container `os.cpu_count()` and `/proc/meminfo` describe the node, not the pod's limits;
sizing threads or a second model copy by them overcommits, and the OOM killer ends the swap.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def usable_cpus() -> int:
    """CPUs this process may run on, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = (_read(_CGROUP / "cpu.max") or "max").split()
    if quota and quota[0] != "max" and len(quota) == 2:
        cpus = min(cpus, max(1, math.ceil(int(quota[0]) / int(quota[1]))))
    return max(1, cpus)


def available_memory() -> int | None:
    """Bytes that can still be allocated: MemAvailable, capped by the cgroup v2 memory limit."""
    found: list[int] = []
    meminfo = _read(Path("/proc/meminfo")) or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            found.append(int(line.split()[1]) * 1024)
    limit, used = _read(_CGROUP / "memory.max"), _read(_CGROUP / "memory.current")
    if limit and limit != "max" and used and limit.isdigit() and used.isdigit():
        found.append(max(0, int(limit) - int(used)))
    return min(found) if found else None


def memory_limit() -> int | None:
    """The memory this server may use in all: the cgroup v2 limit, else the machine's memory."""
    limit = _read(_CGROUP / "memory.max")
    if limit and limit.isdigit():
        return int(limit)
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
    "ti": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_budget(text: str) -> int:
    """`512MiB`, `2G`, `1073741824` (bytes) or `60%` (of `memory_limit()`) -> bytes; ValueError
    naming the forms otherwise."""
    value = text.strip()
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise ValueError(f"memory share {text!r} must be a percentage above 0 and at most 100")
        limit = memory_limit()
        if limit is None:
            raise ValueError(f"memory share {text!r}: this machine's memory limit is unknown; give bytes")
        return int(limit * share / 100)
    found = _SIZE.match(value)
    if found is None:
        raise ValueError(f"memory budget {text!r} must be bytes (e.g. 2GiB, 512MB, 1073741824) or a share (60%)")
    size = int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])
    if size < 1 << 20:
        raise ValueError(f"memory budget {text!r} is under 1 MiB: give a unit (e.g. 512MiB)")
    return size


def private_bytes(pid: str = "self") -> int | None:
    """Memory only this process holds (private clean + dirty pages, /proc/PID/smaps_rollup)."""
    text = _read(Path(f"/proc/{pid}/smaps_rollup"))
    if text is None:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1]) * 1024
    return total
