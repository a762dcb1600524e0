"""The drain in-process: it waits for in-flight requests, and no longer than the grace period."""

from __future__ import annotations

import threading
import time

from server.ipc.drain import Drain


def test_the_drain_stops_once_in_flight_requests_are_answered() -> None:
    drain = Drain(api_servers=2, grace_s=30)
    drain.inflight[1].value = 2
    stopped = threading.Event()
    waiter = threading.Thread(target=drain._wait_then_stop, args=(stopped.set,))
    waiter.start()
    assert not stopped.wait(0.2)  # two requests still running
    drain.inflight[1].value = 0
    assert stopped.wait(5)
    waiter.join()


def test_the_drain_gives_up_at_the_grace_period() -> None:
    drain = Drain(api_servers=1, grace_s=1)  # waits max(1, grace - 5) = 1 s
    drain.inflight[0].value = 1  # a request that never finishes
    started = time.monotonic()
    stopped = threading.Event()
    drain._wait_then_stop(stopped.set)
    assert stopped.is_set() and time.monotonic() - started >= 1.0
