#!/usr/bin/env python3
"""Fan-out load generator for Server-Sent Events push servers.

Opens N subscribers to one event-stream URL over raw sockets, publishes M events at R events/s
to one channel, and prints ONE line of JSON with connection, delivery, latency, CPU and memory
figures. Every published payload is 128 bytes and embeds its sequence number and its publish time
(``time.time_ns()``), so one-way latency is measured on one machine with one clock.

Bounded: ``--events``/``--duration`` cap the publish phase, ``--timeout`` caps the whole run, and
every socket is closed before exit. Only loopback hosts are accepted.

Usage (see benchmarks/README.md)::

    python benchmarks/loadgen.py --url http://127.0.0.1:8080/events/bench \
        --subscribers 1000 --rate 20 --duration 10 \
        --publish http-json --publish-url http://127.0.0.1:8080/publish/bench \
        --server-pid 1234 --server-pid 1240
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import signal
import socket
import struct
import sys
import time
from array import array
from collections import deque
from typing import Callable
from urllib.parse import urlsplit

PAYLOAD_SIZE = 128
# Payload layout: "@" + 8-digit sequence + ":" + 19-digit time_ns + ":" + padding to 128 bytes.
# The "@" marker finds it inside whatever framing the server adds (e.g. a JSON string's quotes).
_PAD = b"." * PAYLOAD_SIZE
_CLK_TCK = os.sysconf("SC_CLK_TCK")
time_ns = time.time_ns


def make_payload(seq: int, ts_ns: int) -> bytes:
    head = b"@%08d:%019d:" % (seq, ts_ns)
    return head + _PAD[len(head) :]


# --------------------------------------------------------------------------- /proc readings


def proc_stat(pid: int | str) -> tuple[int, float] | None:
    """(parent pid, utime + stime of all its threads) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = raw.rsplit(b")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_cpu_seconds(pid: int) -> float | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def cores_cpu_seconds() -> list[tuple[float, float]]:
    """Per CPU, from /proc/stat: (task time: user+nice+system+steal, irq+softirq time).

    With IRQ time accounting (as here) softirq work, such as the loopback TCP receive path, is
    charged to no process: a process's utime+stime leaves it out; the core's figure keeps it.
    """
    out = []
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"cpu") and line[3:4].isdigit():
                v = [int(x) for x in line.split()[1:9]]
                out.append(((v[0] + v[1] + v[2] + v[7]) / _CLK_TCK, (v[5] + v[6]) / _CLK_TCK))
    return out


def kernel_threads_cpu_seconds() -> float:
    """CPU of all kernel threads (children of kthreadd): ksoftirqd takes over softirq work
    under load, and that work is network traffic, not another program."""
    total = 0.0
    for name in os.listdir("/proc"):
        stat = proc_stat(name) if name.isdigit() else None
        if stat is not None and stat[0] == 2:
            total += stat[1]
    return total


def sum_readings(pids: list[int], read: Callable[[int], float | None]) -> float | None:
    values = [read(pid) for pid in pids]
    if not pids or any(v is None for v in values):
        return None
    return float(sum(values))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- subscribers


class Stats:
    """Counters shared by every subscriber; plain attributes keep the hot path cheap."""

    def __init__(self) -> None:
        self.tcp_connected = 0
        self.headers_ok = 0
        self.failed: dict[str, int] = {}
        self.dropped = 0
        self.delivered = 0
        self.reordered = 0
        self.other_events = 0
        self.last_header = 0.0
        self.last_delivery = 0
        self.latency_us = array("q")
        self.closing = False
        # Set when publishing starts: subscribers whose headers come later count here instead.
        self.late: Stats | None = None

    def fail(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1


HEAD, BODY, DONE = 0, 1, 2


class Subscriber(asyncio.Protocol):
    """One event-stream client: HTTP/1.1 GET, then a minimal chunked + event-stream parser.

    Events are split on blank lines and counted when they carry a ``data:`` line; a benchmark
    payload is recognised by its "@" marker and yields a latency sample. Only LF and CRLF line
    ends are handled (every server under test uses them); lone CR is not.
    """

    __slots__ = (
        "buf",
        "chunk_left",
        "chunked",
        "craw",
        "crlf_skip",
        "head",
        "idle",
        "last_seq",
        "lat_append",
        "request",
        "state",
        "stats",
        "transport",
    )

    def __init__(self, request: bytes, stats: Stats) -> None:
        self.request = request
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.state = HEAD
        self.head = b""
        self.chunked = False
        self.craw = b""
        self.chunk_left = 0
        self.crlf_skip = 0
        self.buf = b""
        self.last_seq = -1
        self.idle = False  # in the body with no partial input: the fast path applies
        self.lat_append = stats.latency_us.append

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.tcp_connected += 1
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == HEAD:
            self.stats.fail("closed before headers")
        elif self.state == BODY and not self.stats.closing:
            self.stats.dropped += 1
        self.state = DONE

    def _give_up(self, reason: str) -> None:
        self.stats.fail(reason)
        self.state = DONE
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.idle:
            # Fast path for the usual read of a push server: exactly one whole event (one whole
            # chunk when chunked), nothing pending. Same rules as _body, fewer steps.
            n = len(data)
            if self.chunked:
                eol = data.find(b"\r\n")
                start, end = eol + 2, n - 2
                ok = (
                    data.endswith(b"\n\n\r\n")
                    and eol > 0
                    and data.count(b"\r") == 2
                    and data.find(b"\n\n", start) == end - 2
                )
                if ok:
                    try:
                        ok = int(data[:eol], 16) == end - start
                    except ValueError:
                        ok = False
            else:
                start, end = 0, n
                ok = data.find(b"\n\n") == n - 2 and b"\r" not in data
            if ok:
                now = time_ns()
                if self._sample(data, start, now):
                    stats = self.stats
                    stats.delivered += 1
                    stats.last_delivery = now
                return
        if self.state == BODY:
            self._body(data)
        elif self.state == HEAD:
            self._head(data)
        self.idle = self.state == BODY and not (self.buf or self.craw or self.chunk_left or self.crlf_skip)

    def _head(self, data: bytes) -> None:
        head = self.head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            if len(head) > 65536:
                self._give_up("oversized headers")
            return
        self.head = b""
        lines = head[:end].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            self._give_up("bad status line")
            return
        if parts[1] != b"200":
            self._give_up("status " + parts[1].decode("latin-1"))
            return
        content_type = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"content-type":
                content_type = value.strip().lower()
        if not content_type.startswith(b"text/event-stream"):
            self._give_up("content-type not text/event-stream")
            return
        self.state = BODY
        stats = self.stats
        if stats.late is not None:
            # Headers after publishing began: its deliveries are not part of the measurement.
            stats = self.stats = stats.late
            self.lat_append = stats.latency_us.append
        stats.headers_ok += 1
        stats.last_header = time.monotonic()
        rest = head[end + 4 :]
        if rest:
            self._body(rest)

    def _dechunk(self, data: bytes) -> bytes:
        # Fast path: one whole chunk per read, the usual case for a push of one event.
        if not self.chunk_left and not self.crlf_skip and not self.craw:
            eol = data.find(b"\r\n")
            if eol > 0:
                try:
                    size = int(data[:eol], 16)
                except ValueError:
                    size = -1
                if size > 0 and len(data) == eol + size + 4 and data.endswith(b"\r\n"):
                    return data[eol + 2 : eol + 2 + size]
        # General case (RFC 9112 section 7.1): chunk-size [; ext] CRLF data CRLF ... 0 CRLF.
        raw = self.craw + data if self.craw else data
        self.craw = b""
        out = []
        pos, n = 0, len(raw)
        while pos < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_skip = 2
            elif self.crlf_skip:
                skip = min(self.crlf_skip, n - pos)
                pos += skip
                self.crlf_skip -= skip
            else:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    self.craw = raw[pos:]
                    break
                try:
                    size = int(raw[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    self._give_up("bad chunk size")
                    return b""
                pos = eol + 2
                if size == 0:
                    self.state = DONE  # last-chunk: the server ended the stream
                    if not self.stats.closing:
                        self.stats.dropped += 1
                    break
                self.chunk_left = size
        return b"".join(out)

    def _body(self, data: bytes) -> None:
        now = time_ns()
        if self.chunked:
            data = self._dechunk(data)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        self.buf = buf[end + 2 :] if end + 2 < len(buf) else b""
        # Usually one read holds exactly one event: skip the split.
        blocks = (buf[:end],) if buf.find(b"\n\n") == end else buf[:end].split(b"\n\n")
        delivered = 0
        for block in blocks:
            if self._sample(block, 0, now):
                delivered += 1
        if delivered:
            stats = self.stats
            stats.delivered += delivered
            stats.last_delivery = now

    def _sample(self, event: bytes, start: int, now: int) -> bool:
        """Take the latency sample of the event at event[start:]; False if it carries none.

        Both read paths end here. An event is dispatched at a blank line only if it had a
        ``data:`` field (a line of its own: the chunk-size line before ``start`` ends in LF too).
        """
        i = event.find(b"data:", start)
        while i > 0 and event[i - 1] != 10:
            i = event.find(b"data:", i + 5)
        if i < 0:
            return False
        j = event.find(b"@", i)
        try:
            if j < 0:
                raise ValueError
            seq = int(event[j + 1 : j + 9])
            ts = int(event[j + 10 : j + 29])
        except ValueError:
            self.stats.other_events += 1
            return False
        if seq <= self.last_seq:
            self.stats.reordered += 1
        self.last_seq = seq
        self.lat_append((now - ts) // 1000)
        return True

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: reset instead of leaving thousands of TIME_WAIT sockets behind.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            transport.abort()


# --------------------------------------------------------------------------- publishers


class _ReplyProtocol(asyncio.Protocol):
    """A pipelined request/response connection: replies resolve waiters in send order."""

    def __init__(self, parse: Callable[[bytes], tuple[object | None, bytes]]) -> None:
        self.parse = parse
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiters: deque[asyncio.Future] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiters:
            reply, self.buf = self.parse(self.buf)
            if reply is None:
                break
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("publisher connection closed"))


def _retrieve(future: asyncio.Future) -> None:
    """Mark a reply's exception as seen: a timed-out prime may fail after nobody waits."""
    if not future.cancelled():
        future.exception()


class Publisher:
    """Publishes over one kept-alive connection, reconnecting when the server closes it.

    ``send`` writes a request without waiting for earlier replies (HTTP/1.1 and RESP both allow
    pipelining), so the offered rate stays R even when a server answers a publish only after
    its fan-out, as nchan does.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.proto: _ReplyProtocol | None = None
        self.last_reply: object = None

    def parse(self, buf: bytes) -> tuple[object | None, bytes]:
        raise NotImplementedError

    def encode(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def check(self, reply: object) -> None:
        """Raise if the reply says the publish was refused."""

    async def connect(self) -> _ReplyProtocol:
        if self.proto is None or self.proto.closed:
            loop = asyncio.get_running_loop()
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ReplyProtocol(self.parse), self.host, self.port),
                self.timeout,
            )
            self.proto = proto  # type: ignore[assignment]
        assert self.proto is not None
        return self.proto

    async def send(self, payload: bytes) -> asyncio.Future:
        """Write one publish; the returned future gets the server's reply."""
        proto = await self.connect()
        assert proto.transport is not None
        waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(_retrieve)
        proto.waiters.append(waiter)
        proto.transport.write(self.encode(payload))
        return waiter

    def accept(self, waiter: asyncio.Future) -> None:
        """Raise unless a finished send was accepted by the server."""
        reply = waiter.result()
        self.last_reply = reply
        self.check(reply)

    async def publish(self, payload: bytes) -> None:
        waiter = await self.send(payload)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.timeout)
        except asyncio.TimeoutError:
            self.close()
            raise
        self.accept(waiter)

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.abort()
        self.proto = None


class HttpPublisher(Publisher):
    """POST to a URL: JSON ``{"data": payload}`` (sse-gateway) or the raw payload (nchan)."""

    def __init__(self, url: str, json_body: bool, timeout: float) -> None:
        host, port, path = split_http_url(url)
        super().__init__(host, port, timeout)
        self.json_body = json_body
        content_type = b"application/json" if json_body else b"text/plain"
        self.head = b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: %s\r\n" % (
            path.encode(),
            host.encode(),
            port,
            content_type,
        )
        self.close_after = False

    def encode(self, payload: bytes) -> bytes:
        body = b'{"data": "%s"}' % payload if self.json_body else payload
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def parse(self, buf: bytes) -> tuple[object | None, bytes]:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None, buf
        lines = buf[:end].lower().split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                self.close_after = b"close" in value
        body_start = end + 4
        if chunked:
            # Small publish replies: wait for the last-chunk marker; skip decoding the rest.
            tail = buf.find(b"0\r\n\r\n", body_start)
            if tail < 0:
                return None, buf
            return status, buf[tail + 5 :]
        if len(buf) < body_start + length:
            return None, buf
        return status, buf[body_start + length :]

    def check(self, reply: object) -> None:
        if self.close_after:
            self.close()
        if not isinstance(reply, int) or not 200 <= reply < 300:
            raise RuntimeError(f"publish got HTTP {reply}")


class RedisPublisher(Publisher):
    """PUBLISH over RESP; the message is the raw payload or flask-sse's JSON envelope."""

    def __init__(self, url: str, channel: str, envelope: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError("--redis-url must be redis://host:port[/db]")
        super().__init__(parts.hostname or "127.0.0.1", parts.port or 6379, timeout)
        self.channel = channel.encode()
        self.envelope = envelope

    def encode(self, payload: bytes) -> bytes:
        if self.envelope == "flask-sse":
            payload = b'{"data": "%s", "type": "message"}' % payload
        args = (b"PUBLISH", self.channel, payload)
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(out)

    def parse(self, buf: bytes) -> tuple[object | None, bytes]:
        eol = buf.find(b"\r\n")
        if eol < 0:
            return None, buf
        line = buf[:eol]
        if line.startswith(b":"):
            return int(line[1:]), buf[eol + 2 :]
        # Anything but an integer reply (e.g. "-ERR ...") is a refused publish.
        return RuntimeError(line.decode("latin-1", "replace")), buf[eol + 2 :]

    def check(self, reply: object) -> None:
        if isinstance(reply, Exception):
            raise reply


# --------------------------------------------------------------------------- the run


def split_http_url(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url}")
    require_loopback(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


def require_loopback(host: str) -> None:
    address = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
    if not address.is_loopback:
        raise ValueError(f"{host} is not a loopback address; this tool only targets loopback")


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] / 1000.0


class Run:
    """One load run; ``result`` is filled as phases complete so a timeout still reports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.subscribers: list[Subscriber] = []
        self.publisher: Publisher | None = None
        self.result: dict[str, object] = {
            "label": args.label,
            "subscribers": args.subscribers,
            "rate": args.rate,
            "publish_mode": args.publish,
        }
        self.t_publish0 = 0
        self.cpu0: float | None = None
        self.cores0: list[tuple[float, float]] = []
        self.kthreads0 = 0.0
        self.t_phase0 = 0.0
        self.ru0 = 0.0

    def make_publisher(self) -> Publisher:
        a = self.args
        if a.publish == "redis":
            require_loopback(urlsplit(a.redis_url).hostname or "127.0.0.1")
            return RedisPublisher(a.redis_url, a.channel, a.redis_envelope, a.request_timeout)
        return HttpPublisher(a.publish_url, a.publish == "http-json", a.request_timeout)

    async def connect_all(self) -> None:
        a = self.args
        loop = asyncio.get_running_loop()
        host, port, path = split_http_url(a.url)
        if a.token:
            path += ("&" if "?" in path else "?") + "token=" + a.token
        request = (
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nUser-Agent: sse-bench\r\n\r\n" % (path.encode(), host.encode(), port)
        )
        stats = self.stats
        remaining = iter(range(a.subscribers))

        async def opener() -> None:
            for _ in remaining:
                sub = Subscriber(request, stats)
                try:
                    await asyncio.wait_for(
                        loop.create_connection(lambda sub=sub: sub, host, port), a.request_timeout
                    )
                except asyncio.TimeoutError:
                    stats.fail("connect timeout")
                    continue
                except OSError as exc:
                    stats.fail(type(exc).__name__)
                    continue
                self.subscribers.append(sub)

        t0 = time.monotonic()
        openers = [asyncio.ensure_future(opener()) for _ in range(min(a.connect_concurrency, a.subscribers))]
        primes = 0
        last_prime = t0
        deadline = t0 + a.connect_timeout
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                settled = stats.headers_ok + sum(stats.failed.values())
                if settled >= a.subscribers:
                    break
                # Some servers (flask-sse under gunicorn) send response headers only with the
                # first event. While connected subscribers wait for headers and nothing moves,
                # publish an unmeasured "prime" event every --prime-interval seconds.
                waiting = stats.tcp_connected - stats.headers_ok - stats.dropped
                now = time.monotonic()
                quiet_since = max(last_prime, stats.last_header or t0)
                if a.prime_interval > 0 and waiting > 0 and now - quiet_since >= a.prime_interval:
                    last_prime = now
                    try:
                        await self.publisher.publish(b"prime")  # type: ignore[union-attr]
                        primes += 1
                    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                        self.result["prime_error"] = repr(exc)
        finally:
            for task in openers:
                task.cancel()
            await asyncio.gather(*openers, return_exceptions=True)
        reasons = dict(stats.failed)
        unanswered = sum(1 for sub in self.subscribers if sub.state == HEAD)
        if unanswered:
            reasons["no headers in time"] = unanswered
        self.result.update(
            connected=stats.headers_ok,
            failed=a.subscribers - stats.headers_ok,
            fail_reasons=reasons,
            connect_seconds=round((stats.last_header or time.monotonic()) - t0, 3),
            primes=primes,
        )

    async def publish_all(self) -> None:
        a = self.args
        publisher = self.publisher
        assert publisher is not None
        events = a.events if a.events else max(1, int(a.rate * a.duration))
        interval = 1.0 / a.rate
        published = errors = 0
        t0 = time.monotonic()
        # The time limit leaves the generator room to catch up when its own loop fell behind.
        stop = t0 + a.duration + a.drain if a.duration else float("inf")
        self.t_publish0 = time_ns()
        await publisher.connect()
        waiters: list[asyncio.Future] = []
        for seq in range(events):
            delay = t0 + seq * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() >= stop:
                break
            try:
                waiters.append(await publisher.send(make_payload(seq, time_ns())))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                self.result["publish_error"] = repr(exc)
        sent_seconds = time.monotonic() - t0
        drain_end = time.monotonic() + a.drain
        if waiters:
            # Replies are awaited within the drain, so every server gets the same window.
            await asyncio.wait(waiters, timeout=max(0.1, drain_end - time.monotonic()))
        # A refused publish (error reply, lost connection) is not expected to be delivered; one
        # still unanswered is: the server may answer only after its fan-out.
        unconfirmed = 0
        for waiter in waiters:
            if not waiter.done():
                unconfirmed += 1
                continue
            try:
                publisher.accept(waiter)
                published += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                self.result["publish_error"] = repr(exc)
        published += unconfirmed
        self.result.update(
            events=events,
            published=published,
            publish_unconfirmed=unconfirmed,
            publish_errors=errors,
            publish_seconds=round(sent_seconds, 3),
        )
        if isinstance(publisher, RedisPublisher):
            self.result["redis_receivers"] = publisher.last_reply
        # Drain: wait for every live subscriber to get every accepted event, up to --drain.
        stats = self.stats
        while time.monotonic() < drain_end:
            live = stats.headers_ok - stats.dropped
            if stats.delivered >= live * published:
                break
            await asyncio.sleep(0.02)

    def measure_publish_phase(self) -> None:
        a, stats, result = self.args, self.stats, self.result
        pids = a.server_pid
        cpu1 = sum_readings(pids, proc_cpu_seconds)
        cores1 = cores_cpu_seconds()
        kthreads = kernel_threads_cpu_seconds() - self.kthreads0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        loadgen_cpu = ru.ru_utime + ru.ru_stime - self.ru0
        result["loadgen_cpu_s"] = round(loadgen_cpu, 3)
        result["phase_seconds"] = round(time.monotonic() - self.t_phase0, 3)
        late = stats.late or Stats()
        result.update(late_subscribers=late.headers_ok, late_deliveries=late.delivered)
        published = int(result.get("published", 0))  # type: ignore[call-overload]
        expected = stats.headers_ok * published
        result.update(
            delivered=stats.delivered,
            expected=expected,
            loss=round(1 - stats.delivered / expected, 6) if expected else None,
            dropped=stats.dropped,
            reordered=stats.reordered,
            other_events=stats.other_events,
        )
        if stats.delivered and stats.last_delivery > self.t_publish0:
            span = (stats.last_delivery - self.t_publish0) / 1e9
            result["deliveries_per_s"] = round(stats.delivered / span, 1)
        lat = sorted(stats.latency_us)
        if lat:
            result.update(
                latency_p50_ms=round(percentile(lat, 0.50), 2),
                latency_p99_ms=round(percentile(lat, 0.99), 2),
                latency_max_ms=round(lat[-1] / 1000.0, 2),
            )
        if cpu1 is not None and self.cpu0 is not None:
            cpu = cpu1 - self.cpu0
            result["server_cpu_s"] = round(cpu, 3)
            if stats.delivered:
                result["cpu_s_per_1k"] = round(cpu / stats.delivered * 1000, 5)
            tasks = [c1[0] - c0[0] for c0, c1 in zip(self.cores0, cores1)]
            irqs = [c1[1] - c0[1] for c0, c1 in zip(self.cores0, cores1)]
            result["softirq_cpu_s"] = round(sum(irqs), 3)
            result["kernel_threads_cpu_s"] = round(kthreads, 3)
            # Task time of processes that are neither the server nor this generator: other
            # programs sharing the cores. Large values make the run's figures suspect.
            other = sum(tasks) - cpu - loadgen_cpu - kthreads
            result["background_cpu_s"] = round(max(0.0, other), 3)
            if a.server_core is not None and a.server_core < len(tasks) and stats.delivered:
                core = tasks[a.server_core] + irqs[a.server_core]
                result["server_core_busy_s"] = round(core, 3)
                result["core_cpu_s_per_1k"] = round(core / stats.delivered * 1000, 5)
        elif pids:
            result["server_gone"] = True
        rss = sum_readings(pids, proc_rss_kb)
        if rss is not None:
            result["server_rss_mb"] = round(rss / 1024, 1)

    async def main(self) -> None:
        a = self.args
        pids = a.server_pid
        self.publisher = self.make_publisher()
        rss0 = sum_readings(pids, proc_rss_kb)
        cpu_before = sum_readings(pids, proc_cpu_seconds)
        await self.connect_all()
        await asyncio.sleep(a.settle)
        rss1 = sum_readings(pids, proc_rss_kb)
        # The connect phase's end is the publish phase's start: one reading serves both.
        self.cpu0 = sum_readings(pids, proc_cpu_seconds)
        if cpu_before is not None and self.cpu0 is not None and self.stats.headers_ok:
            per_sub = (self.cpu0 - cpu_before) / self.stats.headers_ok * 1000
            self.result["connect_cpu_ms_per_subscriber"] = round(per_sub, 3)
        if rss0 is not None and rss1 is not None:
            self.result["rss_idle_mb"] = round(rss0 / 1024, 1)
            self.result["rss_connected_mb"] = round(rss1 / 1024, 1)
            connected = self.stats.headers_ok
            if connected:
                self.result["idle_kb_per_subscriber"] = round((rss1 - rss0) / connected, 2)
        if not self.stats.headers_ok:
            self.result["error"] = "no subscriber connected"
            return
        self.stats.late = Stats()
        self.t_phase0 = time.monotonic()
        self.cores0 = cores_cpu_seconds()
        self.kthreads0 = kernel_threads_cpu_seconds()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.ru0 = ru.ru_utime + ru.ru_stime
        try:
            await self.publish_all()
        finally:
            self.measure_publish_phase()

    def close(self) -> None:
        self.stats.closing = True
        if self.stats.late is not None:
            self.stats.late.closing = True
        for sub in self.subscribers:
            sub.close()
        if self.publisher is not None:
            self.publisher.close()


async def amain(args: argparse.Namespace) -> dict[str, object]:
    run = Run(args)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(run.main(), args.timeout)
    except asyncio.TimeoutError:
        run.result["error"] = f"timeout after {args.timeout} s"
    except Exception as exc:  # noqa: BLE001 - a failed run still prints its JSON line
        run.result["error"] = repr(exc)
    finally:
        run.close()
        await asyncio.sleep(0)  # let the loop process the aborts
    run.result["elapsed_s"] = round(time.monotonic() - t0, 3)
    return run.result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="event-stream URL to subscribe to")
    p.add_argument("-n", "--subscribers", type=int, default=100)
    p.add_argument("--publish", choices=("http-json", "http-nchan", "redis"), default="http-json")
    p.add_argument("--publish-url", help="POST target for http-json / http-nchan")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--channel", default="bench", help="Redis channel for --publish redis")
    p.add_argument(
        "--redis-envelope",
        choices=("raw", "flask-sse"),
        default="raw",
        help="raw payload, or flask-sse's JSON {data, type}",
    )
    p.add_argument("--rate", type=float, default=20.0, help="events per second")
    p.add_argument("--events", type=int, default=0, help="events to publish (default rate*duration)")
    p.add_argument("--duration", type=float, default=10.0, help="max publish seconds")
    p.add_argument("--timeout", type=float, default=120.0, help="hard limit for the whole run")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        help="max seconds for all subscribers to get their headers",
    )
    p.add_argument("--connect-concurrency", type=int, default=200, help="TCP connects in flight at once")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="per TCP connect and per publish request",
    )
    p.add_argument(
        "--prime-interval",
        type=float,
        default=1.0,
        help="publish an unmeasured event after this many quiet seconds while "
        "subscribers still wait for headers (0: never)",
    )
    p.add_argument("--settle", type=float, default=1.0, help="pause before reading idle RSS")
    p.add_argument("--drain", type=float, default=5.0, help="max wait for late deliveries")
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="server process to measure (repeat: server, its Redis, workers)",
    )
    p.add_argument(
        "--server-core",
        type=int,
        help="CPU the server is pinned to: also report that core's busy time",
    )
    p.add_argument("--label", default="", help="copied into the JSON line")
    p.add_argument("--token", default="", help="a token for a private channel, sent in the "
                   "query (token=) by every subscriber, as browsers do")
    args = p.parse_args(argv)
    if args.publish != "redis" and not args.publish_url:
        p.error("--publish-url is required for http publish modes")
    if args.rate <= 0 or args.subscribers <= 0:
        p.error("--rate and --subscribers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        split_http_url(args.url)
        if args.publish_url:
            split_http_url(args.publish_url)
    except ValueError as exc:
        print(json.dumps({"label": args.label, "error": str(exc)}), flush=True)
        return 2

    # Backstop: if the event loop itself wedges, still print and exit.
    def on_alarm(signum: int, frame: object) -> None:
        print(json.dumps({"label": args.label, "error": "hard timeout"}), flush=True)
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout) + 30)
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(amain(args))
    result["uvloop"] = uvloop is not None
    signal.alarm(0)
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
