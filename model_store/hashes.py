"""sha256 of store files, cached per (path, size, mtime): shared by checksums and signatures."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_CHUNK = 1 << 20


class HashCache:
    """sha256 per (path, size, mtime): a repeated look at an unchanged file costs a stat."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._digests:
                return self._digests[key]
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        with self._lock:
            self._digests[key] = h.hexdigest()
        return h.hexdigest()
