"""An open-loop, rate-limited HTTP client (aiohttp on uvloop), run as its own process.

    python -m bench.paced URL BODIES_FILE --rate 200 --requests 20000 --max-seconds 120 --log LOG.json

Sends request i at start + i/rate, whatever the server's latency (a closed loop would slow down
with the server and hide its stalls), cycling through the bodies of BODIES_FILE (one JSON body a
line). Stops at --requests, --max-seconds or SIGTERM, whichever comes first; at most --max-in-flight
requests are outstanding (a request that would exceed it is counted as `skipped`). Writes every
request to LOG (wall-clock send time, latency, HTTP status or 0, `model_version`) and prints a
summary. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import uvloop

_VERSION = re.compile(rb'"model_version"\s*:\s*"([^"]*)"')


async def run(
    url: str, bodies: list[bytes], rate: float, total: int, max_s: float, max_in_flight: int
) -> dict[str, object]:
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the benchmark client only targets loopback addresses")
    sent: list[float] = []  # wall-clock send time of request i
    latency: list[float] = []
    status: list[int] = []
    version: list[str] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    skipped = 0
    in_flight: set[asyncio.Task[None]] = set()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int, body: bytes) -> None:
            t = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    answer = await r.read()
                    status[i] = r.status
                    m = _VERSION.search(answer, 0, 4096)
                    version[i] = m.group(1).decode() if m else ""
            except aiohttp.ClientError:
                status[i] = 0
            latency[i] = time.perf_counter() - t

        start, start_wall = time.perf_counter(), time.time()
        for i in range(total):
            due = start + i / rate
            if due - start >= max_s or stop.is_set():
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # at most 1/rate: SIGTERM is seen by the next check
            if stop.is_set():
                break
            if len(in_flight) >= max_in_flight:
                skipped += 1
                continue
            sent.append(start_wall + (time.perf_counter() - start))
            latency.append(float("nan"))
            status.append(-1)
            version.append("")
            task = asyncio.create_task(one(len(sent) - 1, bodies[i % len(bodies)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=60)
        seconds = time.perf_counter() - start
    ok = sorted(lat for lat, s in zip(latency, status, strict=True) if s == 200)

    def pct(p: float) -> float:
        return 1000 * ok[min(len(ok) - 1, int(p * len(ok)))] if ok else float("nan")

    return {
        "log": {"sent": sent, "latency": latency, "status": status, "version": version},
        "summary": {
            "requests": len(sent),
            "ok": len(ok),
            "errors": len(sent) - len(ok),
            "skipped": skipped,
            "seconds": seconds,
            "rate": len(sent) / seconds if seconds else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("bodies_file", help="one JSON request body a line")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--max-in-flight", type=int, default=256)
    ap.add_argument("--log", required=True, help="where to write every request (JSON)")
    args = ap.parse_args()
    if args.rate <= 0 or args.requests < 1 or args.max_seconds <= 0 or args.max_in_flight < 1:
        raise SystemExit("bench.paced: --rate, --requests, --max-seconds and --max-in-flight must be positive")
    bodies = [line.encode() for line in Path(args.bodies_file).read_text().splitlines() if line.strip()]
    if not bodies:
        raise SystemExit(f"bench.paced: no request bodies in {args.bodies_file}")
    result = uvloop.run(run(args.url, bodies, args.rate, args.requests, args.max_seconds, args.max_in_flight))
    Path(args.log).write_text(json.dumps(result["log"]))
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
