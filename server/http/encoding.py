"""Compressed request bodies (`Content-Encoding`), as Triton accepts them: gzip and deflate.

tritonclient's `request_compression_algorithm` sends either. The inflated size is capped by the
model's `max_request_bytes` while inflating (413 as soon as it is passed: a small zip bomb never
gets allocated in full); a coding we do not speak (`br`, `zstd`, ...) is 415, never read as plain.
"""

from __future__ import annotations

import zlib

from ..errors import ServingError

# wbits: 16 + MAX_WBITS reads a gzip wrapper; MAX_WBITS a zlib one (HTTP's "deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_CHUNK = 1 << 20  # inflate at most this much per step


def decode_content(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its `Content-Encoding` undone (codings applied in order, undone in reverse).

    Raises ServingError 415 for a coding we do not accept, 413 when the inflated body would be
    over `limit` bytes, 400 when the data is not what its coding says.
    """
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding not in _WBITS:
            raise ServingError(
                415,
                f"Content-Encoding {coding!r} is not supported; send gzip, deflate or identity",
                {"accept-encoding": "gzip, deflate"},
            )
        body = _inflate(body, coding, limit)
    return body


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    wbits = _WBITS[coding]
    if coding == "deflate" and data[:1] and (data[0] & 0x0F) != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header, as some clients send
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    pending = data
    try:
        while True:
            part = inflater.decompress(pending, min(_CHUNK, limit - size + 1))
            size += len(part)
            if size > limit:
                raise ServingError(413, f"request body inflates to over the limit of {limit} bytes")
            parts.append(part)
            pending = inflater.unconsumed_tail
            if not pending:
                break
        tail = inflater.flush()
    except zlib.error as e:
        raise ServingError(400, f"request body is not valid {coding} data: {e}") from None
    size += len(tail)
    if size > limit:
        raise ServingError(413, f"request body inflates to over the limit of {limit} bytes")
    if not inflater.eof:
        raise ServingError(400, f"request body is truncated {coding} data")
    if inflater.unused_data.strip(b"\0"):
        raise ServingError(400, f"request body has data after the end of its {coding} stream")
    parts.append(tail)
    return b"".join(parts)
