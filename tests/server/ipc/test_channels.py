"""Request and answer channels in-process: ordering, a full pipe, a killed worker, timeouts."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import struct
import threading
import time
from queue import Empty

import numpy as np
import pytest

from server.ipc.channels import RequestChannel, ResponseChannels, WorkerLost
from server.ipc.messages import Outcome, Queued, Work
from server.protocol import InferRequest


def queued(uid: int, rows: int = 1, consumer: int = 0, size: int = 4) -> Queued:
    arr = np.zeros((rows, size), dtype=np.float32)
    return Queued(consumer, uid, 0.0, Work(InferRequest({"input": arr}, rows=rows)))


def test_requests_arrive_in_order_and_an_empty_channel_times_out() -> None:
    channel = RequestChannel(producers=1, consumers=1)

    async def produce() -> None:
        for uid in range(5):
            channel.put(queued(uid))

    asyncio.run(produce())
    assert [channel.get(timeout=1).uid for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(Empty):
        channel.get(timeout=0.01)


def test_a_full_pipe_is_finished_by_the_event_loop_without_blocking_it() -> None:
    channel = RequestChannel(producers=1, consumers=1)
    big = 64 * 1024  # floats per request: 256 KiB each, far past a pipe's buffer
    got: list[int] = []

    async def produce() -> None:
        for uid in range(8):
            channel.put(queued(uid, size=big))  # returns at once even though the pipe is full
        assert channel._out, "the unsent bytes wait for the pipe, not the caller"
        loop = asyncio.get_running_loop()
        while len(got) < 8:  # a reader drains while the loop keeps flushing
            got.append((await loop.run_in_executor(None, channel.get, True, 5)).uid)

    asyncio.run(asyncio.wait_for(produce(), 30))
    assert got == list(range(8)) and not channel._out


def test_answers_complete_their_futures_and_a_timeout_is_raised() -> None:
    responses = ResponseChannels(consumers=1, writers=[("m", 0)])

    async def run() -> None:
        responses.start_reading(0)
        first, second = responses.new_uid(), responses.new_uid()
        wait_first = responses.expect(first, "m", timeout=5)
        wait_second = responses.expect(second, "m", timeout=0.05)
        responses.send(0, ("m", 0), [(first, Outcome(200, 1))])
        assert (await wait_first()).status == 200
        with pytest.raises(TimeoutError):
            await wait_second()

    asyncio.run(run())


def _answer_from_another_process(responses: ResponseChannels, uid: int) -> None:
    responses.send(0, ("m", 0), [(uid, Outcome(200, 1))])


def test_requests_held_by_a_killed_worker_fail_at_once_when_its_replacement_answers() -> None:
    responses = ResponseChannels(consumers=1, writers=[("m", 0)])

    async def run() -> None:
        responses.start_reading(0)
        lost, answered = responses.new_uid(), responses.new_uid()
        wait_lost = responses.expect(lost, "m", timeout=30)
        wait_answered = responses.expect(answered, "m", timeout=30)
        # The worker that took `lost` died; its replacement (another process) answers the next.
        proc = mp.get_context("spawn").Process(target=_answer_from_another_process, args=(responses, answered))
        proc.start()
        assert (await wait_answered()).status == 200
        with pytest.raises(WorkerLost):
            await asyncio.wait_for(wait_lost(), 1)  # not after its 30 s timeout
        proc.join(10)

    asyncio.run(run())


def test_with_several_workers_per_model_out_of_order_answers_are_not_losses() -> None:
    responses = ResponseChannels(consumers=1, writers=[("m", 0), ("m", 1)])

    async def run() -> None:
        responses.start_reading(0)
        a, b = responses.new_uid(), responses.new_uid()
        wait_a, wait_b = responses.expect(a, "m", 5), responses.expect(b, "m", 5)
        responses.send(0, ("m", 1), [(b, Outcome(200, 1))])
        responses.send(0, ("m", 0), [(a, Outcome(200, 1))])
        assert [(await wait_b()).status, (await wait_a()).status] == [200, 200]
        assert not responses._in_order  # nothing tracked for in-order loss detection

    asyncio.run(run())


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    from server.ipc.channels import FrameReader, _frame

    stream = b"".join(_frame(("message", i, bytearray(i * 100))) for i in range(20))
    reader, got = FrameReader(), []
    for at in range(0, len(stream), 37):  # pieces that cut headers and bodies alike
        got += reader.feed(stream[at : at + 37])
    assert [m[1] for m in got] == list(range(20)) and all(len(m[2]) == m[1] * 100 for m in got)


def test_requests_and_answers_cross_with_every_field_and_writable_arrays() -> None:
    from server.ipc.messages import pack_answers, pack_queued, unpack_answers, unpack_queued

    texts = np.array([[b"a", b"bc"]], dtype=object)
    floats = np.arange(6, dtype=np.float64).reshape(3, 2)[:, ::-1]  # not contiguous
    request = InferRequest({"t": texts, "x": floats}, "id-1", ["y"], {"y": True}, True, 3)
    back = unpack_queued(pack_queued(Queued(1, 7, 2.5, Work(request, 4, "stable", "m", [[1, 2]]))))
    assert (back.consumer, back.uid, back.enqueued_at) == (1, 7, 2.5)
    assert (back.work.version, back.work.label, back.work.model, back.work.instances) == (4, "stable", "m", [[1, 2]])
    got = back.work.request
    assert (got.id, got.outputs, got.binary, got.binary_default, got.rows) == ("id-1", ["y"], {"y": True}, True, 3)
    assert got.inputs["t"].tolist() == [[b"a", b"bc"]] and np.array_equal(got.inputs["x"], floats)
    assert got.inputs["x"].flags.writeable  # a runtime may write into its input (torch warns otherwise)
    outcome = Outcome(200, 2, {"y": floats}, "", 0.1, 0.2, 3, {"p": 1})
    [(uid, answer)] = unpack_answers(pack_answers([(9, outcome)]))
    assert uid == 9 and np.array_equal(answer.outputs["y"], floats)  # type: ignore[index]
    assert (answer.status, answer.version, answer.queue_s, answer.infer_s, answer.batch_rows, answer.payload) == (
        200, 2, 0.1, 0.2, 3, {"p": 1}
    )  # fmt: skip
    waited = Outcome(503, error="still loading", retry_after_s=10, cold_start_s=0.25)
    [(_, back_waited)] = unpack_answers(pack_answers([(1, waited)]))
    assert (back_waited.retry_after_s, back_waited.cold_start_s) == (10, 0.25)


def test_requests_put_in_one_loop_turn_reach_the_worker_in_one_read() -> None:
    channel = RequestChannel(producers=1, consumers=1)

    async def produce() -> None:
        for uid in range(5):
            channel.put(queued(uid))
        assert channel._out, "nothing is written before the loop turn ends"
        await asyncio.sleep(0)
        assert not channel._out

    asyncio.run(produce())
    assert channel.get(timeout=1).uid == 0
    assert len(channel._received) == 4  # read ahead in the same read
    assert [channel.get(timeout=1).uid for _ in range(4)] == [1, 2, 3, 4]


def test_a_garbled_request_stream_is_dropped_and_the_next_request_is_served() -> None:
    channel = RequestChannel(producers=1, consumers=1)
    os.write(channel._writers[0].fileno(), struct.pack("!i", 5) + b"\x00garb")  # a dead worker's half-read

    async def produce() -> None:
        channel.put(queued(1))

    with pytest.raises(Empty):
        channel.get(timeout=0.1)
    asyncio.run(produce())
    assert channel.get(timeout=1).uid == 1


def test_a_worker_spins_briefly_after_a_request_at_light_load_and_then_sleeps() -> None:
    """A request that comes while the worker spins is taken; an idle worker costs no CPU past
    its spin (the spin ends spin_s after the last request, or at once under load)."""
    channel = RequestChannel(producers=1, consumers=1, spin_s=0.05)
    loop = asyncio.new_event_loop()

    def put_later(uid: int, delay: float) -> None:
        async def produce() -> None:
            await asyncio.sleep(delay)
            channel.put(queued(uid))
            await asyncio.sleep(0)  # the flush

        loop.run_until_complete(produce())

    try:
        put_later(0, 0)
        assert channel.get(timeout=1).uid == 0
        later = threading.Thread(target=put_later, args=(1, 0.01))
        later.start()
        assert channel.get(timeout=1).uid == 1  # came during the spin
        later.join()
        cpu = time.process_time()
        with pytest.raises(Empty):
            channel.get(timeout=0.5)  # spins up to 50 ms, then sleeps
        assert time.process_time() - cpu < 0.25

        busy = RequestChannel(producers=1, consumers=1, spin_s=5.0)
        busy._per_read = 4.0  # reads were finding several requests each: no spin at all
        cpu = time.process_time()
        with pytest.raises(Empty):
            busy.get(timeout=0.5)
        assert time.process_time() - cpu < 0.25
    finally:
        loop.close()


@pytest.mark.parametrize("consumers", [1, 2])
def test_a_cancel_travels_behind_its_request_and_is_remembered_once(consumers: int) -> None:
    channel = RequestChannel(producers=1, consumers=consumers)

    async def produce() -> None:
        channel.put(queued(1))
        channel.put(queued(2))
        channel.cancel(0, 1)

    asyncio.run(produce())
    assert [channel.get(timeout=1).uid for _ in range(2)] == [1, 2]
    with pytest.raises(Empty):  # the cancel is not a request
        channel.get(timeout=0.05)
    assert channel.cancelled(0, 1) and not channel.cancelled(0, 1) and not channel.cancelled(0, 2)
