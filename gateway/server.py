"""The gevent WSGI server around the app: start, log, and shut down gracefully on a signal."""

import _socket
import gc
import logging
import signal

import gevent
import gevent.event
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer

from .app import create_app
from .brokers import create_broker
from .config import Config
from .greenlet_pool import GreenletPool
from .hub import Hub
from .listener import BACKLOG, bind
from .request_headers import RequestHeaders

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")
READ_BUFFER = 1024
GC_THRESHOLD = 20_000
STARTUP_WAIT = 5.0  # seconds to wait for the broker before serving anyway
IDLE_GREENLETS = 1024


class Handler(WSGIHandler):
    """pywsgi's handler, handing an event stream its connection and response head.

    A body with a `take_over` method (transports.StreamResponse) gets the connection as a
    plain non-blocking socket, to send the head itself; the handler's greenlet then ends and
    pywsgi forgets the connection without closing it.
    """

    def __init__(self, sock, address, server):
        # Request heads are small: a smaller buffer than pywsgi's for every connection.
        super().__init__(sock, address, server, rfile=sock.makefile("rb", READ_BUFFER))

    def MessageClass(self, fp, *args):
        return RequestHeaders(fp)

    def log_request(self):
        # pywsgi formats the line before the logger could decline it.
        if access_log.isEnabledFor(logging.DEBUG):
            super().log_request()

    def process_result(self):
        take_over = getattr(self.result, "take_over", None)
        if take_over is None:
            return super().process_result()
        head = self._response_head()
        self.response_length = len(head)
        sock, self.socket = self.socket, None  # ends pywsgi's keep-alive loop, socket open
        # The descriptor moves to a bare socket: none of gevent's per-socket watchers.
        raw = _socket.socket(*self.server.client_socket_kind, sock.detach())
        raw.setblocking(False)
        take_over(raw, self.response_use_chunked, head)

    def _response_head(self) -> bytes:
        # The status line and headers as pywsgi's first write makes them. pywsgi would send
        # them and the body's first bytes in two sends, each asking the kernel for the
        # socket's buffer size first; the stream sends everything in one.
        self.headers_sent = True
        self.finalize_headers()
        lines = [b"HTTP/1.1 " + self.status]
        lines += [name + b": " + value for name, value in self.response_headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"


class Server(WSGIServer):
    """pywsgi's server with the gateway's handler, and the settings that connection bursts need."""

    handler_class = Handler
    # gevent accepts 100 connections per loop turn by default. When thousands of clients
    # reconnect at once the kernel's accept queue then overflows, and each dropped SYN costs
    # its client a one-second retransmission: drain the whole queue each turn instead.
    max_accept = BACKLOG

    def __init__(self, listener, app, spawn) -> None:
        super().__init__(
            listener, app, spawn=spawn,
            log=LoggingLogAdapter(access_log, logging.DEBUG),
            error_log=LoggingLogAdapter(logging.getLogger("gateway.server"), logging.ERROR),
        )
        # What every accepted socket is, read once: the socket properties build enums each time.
        self.client_socket_kind = (listener.family, listener.type, listener.proto)


def serve(config: Config, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then end every stream and exit within the shutdown timeout.

    `reuse_port`: one of several processes on the port (see supervisor). Raises ListenError
    when the address cannot be listened on.
    """
    listener = bind(config.host, config.port, reuse_port)
    if not reuse_port:
        listener.listen(BACKLOG)  # clients wait in the queue while the broker connects
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    broker = create_broker(config.redis_url, config.prefix, config.history_length,
                           config.history_age)
    hub = Hub(broker, config.max_buffered_bytes)
    broker.start(hub.dispatch)
    if not broker.wait_ready(STARTUP_WAIT):
        log.warning("the broker is not reachable yet; serving anyway (subscribers are asked to "
                    "come back later until it is)")
    if reuse_port:
        # Only now: until it listens, the kernel gives the port's connections to the others.
        listener.listen(BACKLOG)
    app = create_app(config, hub, broker)
    greenlets = GreenletPool(keep=IDLE_GREENLETS)
    server = Server(listener, app, greenlets)
    server.start()
    _tune_garbage_collector()
    host, port = server.address[:2]
    log.info(
        "listening on http://%s:%d; broker %s%s; heartbeat %gs, max message %d B, "
        "max pending %d, max channels %d, history %d events / %gs; publishing %s",
        host, port, broker.name, f" ({_redacted(config.redis_url)})" if config.redis_url else "",
        config.heartbeat, config.max_message_size, config.max_pending, config.max_channels,
        config.history_length, config.history_age,
        f"with {len(config.publish_tokens)} token(s)" if config.publish_tokens
        else "from loopback only",
    )
    stopping.wait()
    log.info("shutting down: ending %d stream(s)", hub.subscriber_count)
    server.close()
    hub.close_all()
    if not greenlets.join(config.shutdown_timeout):
        log.warning("%d request(s) still running after %gs; exiting anyway", greenlets.busy,
                    config.shutdown_timeout)
    broker.stop()
    log.info("stopped")


def _tune_garbage_collector() -> None:
    # Every connection allocates a few dozen long-lived objects; with the default thresholds
    # the collector walks all of them over and over while thousands of clients connect.
    # Freeze what start-up allocated and collect the youngest generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 50)


def _redacted(url: str) -> str:
    # Keep passwords out of logs.
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
