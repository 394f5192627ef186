"""The gevent WSGI server around the app: start, log, and shut down gracefully on a signal."""

import gc
import logging
import signal
import socket

import gevent
import gevent.event
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer

from .app import CONNECTION_KEY, create_app
from .brokers import create_broker
from .config import Config
from .hub import Hub

log = logging.getLogger("gateway")
READ_BUFFER = 1024
GC_THRESHOLD = 20_000


class Handler(WSGIHandler):
    """pywsgi's handler, handing itself to the app so streams can write to their socket."""

    def __init__(self, sock, address, server):
        # Request heads are small, and every idle stream keeps this buffer for its lifetime.
        super().__init__(sock, address, server, rfile=sock.makefile("rb", READ_BUFFER))

    def get_environ(self):
        environ = super().get_environ()
        environ[CONNECTION_KEY] = self
        return environ

    def handle(self):
        # Events are small writes that must leave at once, not wait for Nagle's algorithm.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return super().handle()


def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then end every stream and exit within the shutdown timeout."""
    broker = create_broker(config.redis_url, config.prefix, config.history_length,
                           config.history_age)
    hub = Hub(broker)
    broker.start(hub.dispatch)
    app = create_app(config, hub, broker)
    server = WSGIServer(
        (config.host, config.port),
        app,
        log=LoggingLogAdapter(logging.getLogger("gateway.access"), logging.DEBUG),
        error_log=LoggingLogAdapter(logging.getLogger("gateway.server"), logging.ERROR),
        handler_class=Handler,
        backlog=4096,
    )
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
    stopping = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stopping.set)
    stopping.wait()
    log.info("shutting down: ending %d stream(s)", hub.subscriber_count)
    server.close()
    hub.close_all()
    server.stop(timeout=config.shutdown_timeout)
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
