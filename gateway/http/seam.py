"""The seams between the server and responses that do not simply go out when returned.

An event stream outlives its request: once its response head is ready, the server hands it the
connection and forgets it, and the stream writes to the socket from then on (from the hub's
fan-out, with no greenlet). A WSGI application asks for that by returning a `TakeOver` as its
body; the server recognises it by this type, never by looking for a method.

A publish waits for Redis once its request is read. Returned as a `Deferred`, its answer may be
held back while the server reads and runs the requests pipelined behind it on the connection,
so that their publishes share one round trip; the answers still leave in request order.

A held long-poll may be answered from the event loop rather than from its request's greenlet:
the server puts a `Direct` in the environ of a request that may be (`DIRECT`), through which
the whole response is sent at once, and the application returns a `Sent` body to say it was,
or `HELD` to say it will be: the connection then waits in the event loop, with no greenlet,
and the requests that follow on it may be served there too.
"""

import socket
from abc import ABC, abstractmethod
from typing import Any, Callable

DIRECT = "gateway.direct"  # the environ key of a request's `Direct`, when it has one


class TakeOver(ABC):
    """A WSGI response body that takes the connection over once its head is ready.

    The server calls exactly one of the two methods: `take_over` when the response can start,
    or `close` (WSGI's) when it ends before that (the client left, the server is stopping).
    """

    __slots__ = ()

    @abstractmethod
    def take_over(self, sock: socket.socket, chunked: bool, response_head: bytes) -> None:
        """Own the connection from now on: a non-blocking socket, to close when done.

        `response_head` is the whole response head (status line, headers, empty line) for the
        receiver to send first, in one write with its first body bytes; the body is in chunked
        framing if `chunked` (HTTP/1.1) and delimited by the end of the connection if not
        (HTTP/1.0). Closing the socket is what releases the connection's place under the
        server's connection cap.
        """

    @abstractmethod
    def close(self) -> None:
        """The response ends without taking over (WSGI's `close`): let go of what it holds."""

    def __iter__(self):
        # A WSGI body must be iterable; a server that does not know the seam sends no body.
        return iter(())


class Deferred(ABC):
    """A WSGI response body whose request is read in full and whose answer comes later.

    Iterating it waits for the answer, calls `start_response` (PEP 3333 allows that before the
    first body bytes) and yields the body, so any server can send it as it is. This server may
    first run the requests already received behind it on the same connection, then iterate
    each held-back body in request order; or `close` it unsent when the client has left (the
    work it started is done all the same).
    """

    __slots__ = ()

    @abstractmethod
    def __iter__(self): ...

    @abstractmethod
    def close(self) -> None:
        """The answer will not be sent, or was (WSGI's `close`)."""


class Direct(ABC):
    """A request's way to send its whole response from the event loop, with no greenlet.

    The server gives one only to a GET that leaves the connection open (HTTP/1.1 keep-alive),
    with nothing received behind it and no answer held back before it, so a response sent
    through it goes out in order. The response is the complete one (head and body), as the
    server would frame it: the application's headers and Date, no Connection header.

    An application that returns `HELD` for a request answers it later, from the event loop:
    the request's greenlet is done at once, and until `answered` the connection belongs to the
    event loop. It stays there for the requests that follow while `serve` (given by `follow`)
    takes them, and goes back to a greenlet of the server for anything else.
    """

    __slots__ = ()

    @abstractmethod
    def usable(self) -> bool:
        """Whether a response may still be sent this way (not once the server is stopping)."""

    @abstractmethod
    def date(self) -> str:
        """The Date header's value now."""

    @abstractmethod
    def send(self, response: bytes) -> int:
        """Send what the socket takes now, without waiting: the bytes taken (0 if none, or
        if the client is gone; the server finds that out as it sends the rest)."""

    @abstractmethod
    def follow(self, serve: Callable[[dict], Any]) -> None:
        """Let `serve(environ)` try the connection's next requests in the event loop, once a
        held one is answered: each GET that arrives whole and alone, and keeps the connection
        open. It returns `HELD` or a `Sent` body as the application would (the environ has
        this Direct), or None to leave the request to the server, which runs it as usual."""

    @abstractmethod
    def answered(self, sent: "Sent") -> None:
        """In the event loop: the held request's response went out through `send` (all but
        `sent.rest`, which the server sends next)."""


class Held:
    """The body of a response that will be sent from the event loop (see `Direct`)."""

    __slots__ = ()

    def __iter__(self):
        return iter(())


HELD = Held()


class Sent:
    """A WSGI response body: the response (`status`, a body of `length` bytes) went out through
    the request's `Direct`, all but its last bytes `rest`, which the server sends now."""

    __slots__ = ("status", "length", "rest")

    def __init__(self, status: str, length: int, rest: bytes) -> None:
        self.status = status
        self.length = length
        self.rest = rest

    def __iter__(self):
        return iter(())
