"""Held long-polls are woken by a publish however loaded the process is.

A saturated process runs gevent's callback queue for a few milliseconds a turn of its event
loop, while the requests that I/O wakes get the rest of the turn. A held poll woken through
that queue (a gevent Event) waits behind thousands of others and times out, empty, with its
event queued. Here one real gateway process (with a real redis-server) holds a crowd of polls
while pipelined requests keep it saturated, and one event is published: every held poll must
answer with it, none with nothing. The clients are raw sockets on one asyncio loop.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from conftest import file_descriptors, run_async, wait_until

HELD = 3000  # polls held when the event is published
HOLD = 25  # seconds each may be held (the most by default): far longer than waking them takes
BUSY = 50  # connections that keep the process saturated meanwhile
PIPELINE = 50  # requests each of them sends at once


@pytest.fixture(autouse=True)
def enough_file_descriptors():
    with file_descriptors(2 * (HELD + BUSY) + 1000):  # these sockets, and the gateway's
        yield


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def held_poll(port: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /poll/held?timeout={HOLD} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return await read_response(reader)
    finally:
        writer.close()


async def keep_busy(port: int, stop: asyncio.Event, answered: list[int]) -> None:
    """Pipelined requests that the gateway answers at once (Flask's 404), again and again."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINE
    try:
        while not stop.is_set():
            writer.write(request)
            for _ in range(PIPELINE):
                await read_response(reader)
            answered[0] += PIPELINE
    finally:
        writer.close()


class Publisher:
    """A kept-alive connection that publishes to one channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 channel: str) -> None:
        self.reader, self.writer, self.channel = reader, writer, channel

    @classmethod
    async def connect(cls, port: int, channel: str) -> "Publisher":
        return cls(*await asyncio.open_connection("127.0.0.1", port), channel)

    async def publish(self, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST /publish/%s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (self.channel.encode(), len(body), body))
        return await read_response(self.reader)

    def close(self) -> None:
        self.writer.close()


def subscribers(gateway) -> int:
    return requests.get(gateway.url + "/healthz", timeout=30).json()["subscribers"]


def test_every_held_poll_answers_with_the_event_published_while_the_process_is_saturated(
        start_gateway, redis_db):
    gateway = start_gateway("--redis-url", redis_db.url)

    async def run() -> tuple[str, list[tuple[int, bytes]]]:
        # Connected before the load: a new connection waits its turn like the load does.
        publisher = await Publisher.connect(gateway.port, "held")
        polls = [asyncio.ensure_future(held_poll(gateway.port)) for _ in range(HELD)]
        await asyncio.to_thread(wait_until, lambda: subscribers(gateway) == HELD, 60, 0.1,
                                "every poll to be held")
        stop, answered = asyncio.Event(), [0]
        busy = [asyncio.ensure_future(keep_busy(gateway.port, stop, answered))
                for _ in range(BUSY)]
        try:
            # Saturated: every busy connection has had a round of answers.
            await asyncio.to_thread(wait_until, lambda: answered[0] >= BUSY * PIPELINE, 60,
                                    0.05, "the busy connections to get answers")
            assert not any(poll.done() for poll in polls), "a poll answered before the event"
            status, body = await publisher.publish(b'{"data": "wake up"}')
            assert status == 200, body
            done, pending = await asyncio.wait(polls, timeout=HOLD + 30)
            for poll in pending:
                poll.cancel()
            assert not pending, f"{len(pending)} of {HELD} held polls never answered"
            return json.loads(body)["id"], [poll.result() for poll in polls]
        finally:
            stop.set()
            await asyncio.gather(*busy, return_exceptions=True)
            publisher.close()

    event_id, results = run_async(run())

    statuses = [status for status, _ in results]
    assert statuses == [200] * HELD
    answers = [json.loads(body) for _, body in results]
    empty = [answer for answer in answers if not answer["events"]]
    assert not empty, f"{len(empty)} of {HELD} held polls timed out empty: {empty[0]}"
    expected = {"events": [{"event": "message", "data": "wake up", "id": event_id}],
                "lastEventId": event_id, "retry": 3000}
    assert [answer for answer in answers if answer != expected] == []
