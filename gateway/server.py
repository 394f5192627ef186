"""The gateway process: broker, hub and application behind the HTTP layer; start, log, and
shut down gracefully on a signal."""

import gc
import logging
import random
import signal
import time
from typing import Callable, Optional

import gevent
import gevent.event

from .app import create_app
from .brokers import create_broker
from .config import Config
from .cors import subscribe_policy
from .events_endpoint import EventsEndpoint
from .greenlet_pool import GreenletPool
from .http import h1
from .http.acceptor import Acceptor, default_max_connections
from .http.connection import Server, Settings
from .hub import Hub
from .listener import BACKLOG, bind
from .operations import Operations
from .recent import RecentLimits
from .subscribe import UNCACHEABLE
from .wakeups import Wakeups
from .wire import encode_turn_away

log = logging.getLogger("gateway")
GC_THRESHOLD = 20_000
STARTUP_WAIT = 5.0  # seconds to wait for the broker before serving anyway
IDLE_GREENLETS = 1024
REFUSAL_RETRY = 5  # seconds a client over the connection cap is asked to wait, at least


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
    broker = create_broker(config.redis, config.prefix, config.history_length,
                           config.history_age, config.max_message_size)
    wakeups = Wakeups()
    hub = Hub(broker, config.max_buffered_bytes, _recent_limits(config), config.unsubscribe_grace,
              wakeups)
    operations = Operations(config, hub, broker)
    broker.start(operations.sink(hub.dispatch), hub.resync)
    if not broker.wait_ready(STARTUP_WAIT):
        log.warning("the broker is not reachable yet; serving anyway (subscribers are asked to "
                    "come back later until it is)")
    if reuse_port:
        # Only now: until it listens, the kernel gives the port's connections to the others.
        listener.listen(BACKLOG)
    app = create_app(config, hub, broker, operations)
    greenlets = GreenletPool(keep=IDLE_GREENLETS, wakeups=wakeups)
    settings = Settings(max_head=config.max_head_size, header_timeout=config.header_timeout,
                        idle_timeout=config.idle_timeout,
                        max_body=max(config.max_message_size, config.max_publish_batch_size))
    address = listener.getsockname()
    server = Server(app, settings, address, _refusal(config), greenlets)
    max_connections = config.max_connections or default_max_connections()
    acceptor = Acceptor(listener, server, greenlets, max_connections, BACKLOG)
    acceptor.start()
    operations.start(lambda: acceptor.open)
    _tune_garbage_collector()
    log.info(
        "listening on http://%s:%d; broker %s%s; heartbeat %gs, max message %d B, "
        "max pending %d, max channels %d, max connections %d, history %d events / %gs; "
        "publishing %s",
        address[0], address[1], broker.name,
        f" ({config.redis.describe()})" if config.redis else "",
        config.heartbeat, config.max_message_size, config.max_pending, config.max_channels,
        max_connections, config.history_length, config.history_age,
        f"with {len(config.publish_tokens)} token(s)" if config.publish_tokens
        else "from loopback only",
    )
    stopping.wait()
    log.info("shutting down: ending %d stream(s)", hub.subscriber_count)
    acceptor.close()
    server.stop()
    hub.close_all()
    deadline = time.monotonic() + config.shutdown_timeout
    if not greenlets.join(config.shutdown_timeout):
        log.warning("%d request(s) still running after %gs; exiting anyway", greenlets.busy,
                    config.shutdown_timeout)
    elif not server.join_looped(max(0.0, deadline - time.monotonic())):
        log.warning("%d held poll(s) still unanswered after %gs; exiting anyway",
                    len(server.looped), config.shutdown_timeout)
    operations.stop()
    broker.stop()
    log.info("stopped")


def _recent_limits(config: Config) -> Optional[RecentLimits]:
    # The embedded broker's history is in memory already, and read without I/O.
    if config.redis is None:
        return None
    return RecentLimits(config.recent_events, config.recent_bytes, config.history_length,
                        config.history_age)


def _refusal(config: Config) -> Callable[[Optional[h1.Request]], bytes]:
    """The answer to a client over the connection cap, from its request head if it came.

    An EventSource treats any status but 200 as final and gives up, so a stream request gets
    a 200 event stream that only sets a retry delay and ends: the browser reconnects later.
    Everything else gets 503 with Retry-After. Both delays are spread at random, so refused
    clients do not all come back at the same instant.
    """
    cors = subscribe_policy(config.cors_origins)
    date = h1.HttpDate()

    def refusal(request: Optional[h1.Request]) -> bytes:
        delay = REFUSAL_RETRY * (1 + random.random())
        if request is not None and request.method == "GET" and EventsEndpoint.handles(request.path):
            origin = next((value for name, value in request.fields if name == "origin"), None)
            body = encode_turn_away(int(delay * 1000),
                                    "the gateway is at its connection limit; reconnect later")
            return h1.response_head("200 OK", [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Content-Length", str(len(body))), *UNCACHEABLE.items(),
                *cors.headers(origin).items(), ("Date", date()), ("Connection", "close"),
            ]) + body
        error = h1.HttpError(503, "service unavailable",
                             "the gateway is at its connection limit; retry later")
        return h1.error_response(error, date(), (("Retry-After", str(int(delay))),))

    return refusal


def _tune_garbage_collector() -> None:
    # Every connection allocates a few dozen long-lived objects; with the default thresholds
    # the collector walks all of them over and over while thousands of clients connect.
    # Freeze what start-up allocated and collect the youngest generation less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 50)

