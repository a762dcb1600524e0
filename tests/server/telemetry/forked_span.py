"""Run as a script by test_tracing: the server's order of events in a fresh, single-threaded
process (observers built, then a fork, then the first request in the child). Forking the test
worker itself is unsafe: its other threads may hold a lock the child then waits on forever."""

from __future__ import annotations

import multiprocessing
import sys

from server.config import ServerConfig
from server.telemetry import build_observers
from server.telemetry.tracing import Tracing
from tests.server.telemetry.events import TRACEPARENT, event


def _one_request(tracing: Tracing) -> None:
    tracing(event(headers={"traceparent": TRACEPARENT}))


def main() -> int:
    [tracing] = build_observers(ServerConfig(tracing=True))
    assert isinstance(tracing, Tracing)
    child = multiprocessing.get_context("fork").Process(target=_one_request, args=(tracing,))
    child.start()
    child.join(60)
    if child.exitcode != 0:
        print(f"child exit code {child.exitcode}", file=sys.stderr)
        return 1
    if tracing._provider is not None:
        print("the parent started a tracer provider", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
