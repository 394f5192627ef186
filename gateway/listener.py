"""The gateway's listening socket: address family, port sharing, and options accepted sockets inherit."""

import socket

BACKLOG = 4096


class ListenError(Exception):
    """The address cannot be listened on (taken, not local, not resolvable)."""


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port, to `listen(BACKLOG)` on when ready.

    With `reuse_port`, one of several on the port: the kernel spreads new connections evenly
    across those of them that listen.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Events are small writes that must leave at once, not wait for Nagle's algorithm.
        # Linux copies the option to every accepted socket: no system call per connection.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock
