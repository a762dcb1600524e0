"""A cheap closed-loop HTTP load generator (aiohttp on uvloop), run as its own process.

    python -m bench.client URL BODY_FILE --concurrency 32 --requests 2000 --max-seconds 10 [--header K:V] [--versions]

Prints one JSON object: requests, errors, seconds, throughput, p50/p99 latency (ms) and this
client's own CPU seconds, so its cost can be told apart from the server's. With --versions, also
which `model_version` answered: count, first and last completion (seconds into the run) per
version. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import time
from urllib.parse import urlparse

import aiohttp
import uvloop

_VERSION = re.compile(rb'"model_version"\s*:\s*"([^"]*)"')


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, total: int, max_s: float, versions: bool = False
) -> dict[str, object]:
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the benchmark client only targets loopback addresses")
    latencies: list[float] = []
    seen: dict[str, list[float]] = {}  # version -> [count, first, last]
    errors = 0
    issued = 0
    deadline = time.monotonic() + max_s
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_client() -> None:
            nonlocal issued, errors
            while issued < total and time.monotonic() < deadline:
                issued += 1
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        answer = await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    done = time.perf_counter()
                    latencies.append(done - t)
                    if versions:
                        m = _VERSION.search(answer, 0, 4096)
                        v = seen.setdefault(m.group(1).decode() if m else "?", [0, done - t0, 0.0])
                        v[0] += 1
                        v[2] = done - t0
                else:
                    errors += 1

        cpu0, t0 = _cpu(), time.perf_counter()  # t0 is read by the clients, set before they start
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return 1000 * latencies[min(n - 1, int(p * n))] if n else float("nan")

    result: dict[str, object] = {
        "requests": n,
        "errors": errors,
        "seconds": seconds,
        "throughput": n / seconds if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "client_cpu_s": cpu,
    }
    if versions:
        result["versions"] = {k: {"count": int(c), "first_s": f, "last_s": last} for k, (c, f, last) in seen.items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("body_file")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--versions", action="store_true", help="record which model_version answered")
    args = ap.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    headers = dict(h.split(":", 1) for h in args.header)
    result = uvloop.run(run(args.url, body, headers, args.concurrency, args.requests, args.max_seconds, args.versions))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
