"""A test client for event streams over a real socket: HTTP/1.1, chunked decoding, the spec parser.

Every read has a deadline, so a test waits on a condition and never on a bare sleep.
"""

import socket
import time
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from gateway.wire import EventStreamParser, ParsedEvent


class StreamClosed(Exception):
    """The server ended the response."""


def subscribed(stream: "Stream") -> bool:
    """A `Stream.wait_for` condition: every stream's first chunk ends with an `id:` line; once
    it is parsed, the hub has the subscription and every later publish reaches this stream."""
    return stream.parser.last_event_id != ""


class Stream:
    def __init__(self, url: str, headers: Optional[Dict[str, str]] = None,
                 timeout: float = 10.0, receive_buffer: Optional[int] = None,
                 version: str = "HTTP/1.1") -> None:
        parts = urlsplit(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connect, so the advertised window stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect((parts.hostname, parts.port or 80))
        path = parts.path + ("?" + parts.query if parts.query else "")
        lines = [f"GET {path} {version}", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        self._raw = b""
        self.parser = EventStreamParser()
        self.events: List[ParsedEvent] = []
        self.body = b""  # every body byte received, de-chunked
        self.ended = False
        self.status, self.headers = self._read_head(time.monotonic() + timeout)
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self._chunk_left = 0
        self._parse(self._take_body())  # body bytes that came with the head

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data before the deadline") from None
        except ConnectionResetError:
            data = b""
        return data

    def _read_head(self, deadline: float) -> Tuple[int, Dict[str, str]]:
        while b"\r\n\r\n" not in self._raw:
            data = self._recv(deadline)
            if not data:
                raise StreamClosed("closed before the response head")
            self._raw += data
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def _take_body(self) -> bytes:
        if not self._chunked:
            data, self._raw = self._raw, b""
            return data
        out = []
        while True:
            if self._chunk_left > 0:
                take = self._raw[: self._chunk_left]
                if not take:
                    break
                out.append(take)
                self._raw = self._raw[len(take):]
                self._chunk_left -= len(take)
                continue
            # Expect "<size>\r\n" (or the CRLF that ends the previous chunk's data).
            if self._raw.startswith(b"\r\n"):
                self._raw = self._raw[2:]
            if b"\r\n" not in self._raw:
                break
            size_line, self._raw = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self.ended = True
                break
            self._chunk_left = size
        return b"".join(out)

    def pump(self, deadline: float) -> None:
        """Receive once (blocking until data or the deadline) and parse it."""
        if self.ended:
            raise StreamClosed("the response ended")
        data = self._recv(deadline)
        if not data:
            self.ended = True
        self._raw += data
        body = self._take_body()
        self._parse(body)
        if self.ended and not body:
            raise StreamClosed("the response ended")

    def _parse(self, body: bytes) -> None:
        self.body += body
        self.events.extend(self.parser.feed(body))

    def wait_for(self, condition: Callable[["Stream"], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            self.pump(deadline)

    def wait_events(self, count: int, timeout: float = 10.0) -> List[ParsedEvent]:
        self.wait_for(lambda s: len(s.events) >= count, timeout)
        return self.events[:count]

    def read_to_end(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.pump(deadline)
        except StreamClosed:
            return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
