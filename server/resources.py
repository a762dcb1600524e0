"""What this process may use: CPUs and memory, container limits included.

Inside a container `os.cpu_count()` and `/proc/meminfo` describe the node, not the pod's limits;
sizing threads or a second model copy by them overcommits, and the OOM killer ends the swap.
"""

from __future__ import annotations

import math
import os
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
