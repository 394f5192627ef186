"""What an operator asks of the gateway: GET /metrics (Prometheus), GET /channels and
/channels/<channel> (presence over every process), GET /status (the live page).

Every route here is guarded as publishing is (a publish token, or else a loopback address):
presence names channels, private ones included. `Operations` also runs the process's periodic
work: writing its presence, sampling its metrics under --workers, and feeding the status page
while someone watches.
"""

import logging
from typing import Callable, Optional

import gevent
from flask import Flask, Response, jsonify, request

from . import subscribe
from .brokers import Broker, BrokerUnavailable, MessageSink
from .config import Config
from .hub import Hub
from .metrics import CONTENT_TYPE, Metrics
from .presence import ChannelPresence, create_presence
from .status import StatusFeed, StatusPage, new_channel, shared_channel
from .subscribe import ApiError

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between samples of the metrics (under --workers) and status figures
BUSIEST = 100  # channels GET /channels lists unless told otherwise
BUSIEST_MAX = 1000


class Operations:
    """One process's metrics, presence and status feed."""

    def __init__(self, config: Config, hub: Hub, broker: Broker) -> None:
        self._hub = hub
        self._interval = config.presence_interval
        self.metrics = Metrics(hub, broker, multiprocess=config.workers > 1)
        redis, prefix = config.redis, config.prefix
        self.presence = create_presence(hub, redis, prefix, config.presence_interval)
        if redis is not None:
            def resolve() -> str:
                return shared_channel(redis, prefix)
        else:
            own = new_channel()

            def resolve() -> str:
                return own
        self.feed = StatusFeed(broker, self.figures, resolve)
        self.page = StatusPage()
        self._watchers = 0  # of the status channel, over every process, at the last beat
        self._greenlets: list = []

    def sink(self, dispatch: MessageSink) -> MessageSink:
        return self.metrics.sink(dispatch)

    def figures(self) -> dict:
        return {"process": self.presence.id, **self.metrics.figures()}

    def start(self, http_connections: Callable[[], int]) -> None:
        self.metrics.http_connections = http_connections
        self.feed.resolve()
        self._greenlets = [gevent.spawn(self._beat_forever), gevent.spawn(self._tick_forever)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=True, timeout=2)
        self.presence.stop()

    def _beat_forever(self) -> None:
        while True:
            _guarded(self._beat)
            gevent.sleep(self._interval)

    def _beat(self) -> None:
        self.presence.beat()
        channel = self.feed.channel
        if channel is not None:
            try:
                self._watchers = self.presence.channel(channel).subscribers
            except BrokerUnavailable:
                self._watchers = 0

    def _tick_forever(self) -> None:
        while True:
            gevent.sleep(TICK)
            _guarded(self._tick)

    def _tick(self) -> None:
        if self.metrics.multiprocess:
            self.metrics.sample()
        channel = self.feed.resolve()
        if channel is not None and (self._watchers or self._hub.local_subscribers(channel)):
            self.feed.publish()

    def register(self, app: Flask, authorize: Callable[[], None],
                 publish_refused: Callable[[], int]) -> None:
        """Add the routes to the gateway's Flask app; `authorize` raises ApiError unless the
        request may publish."""
        register_routes(app, self, authorize)
        self.metrics.publish_refused = publish_refused


def register_routes(app: Flask, ops: Operations, authorize: Callable[[], None]) -> None:
    metrics, presence, page, feed = ops.metrics, ops.presence, ops.page, ops.feed

    @app.after_request
    def _count(response: Response) -> Response:
        # Per request, after the answer is made: a refusal for want of a token or a local
        # address (the bare-WSGI endpoints count their own).
        status = response.status_code
        if status in (401, 403):
            metrics.refused_auth(request.endpoint or "none", status)
        return response

    @app.get("/metrics")
    def metrics_text():
        authorize()
        return Response(metrics.exposition(), content_type=CONTENT_TYPE)

    @app.get("/channels")
    def channels():
        authorize()
        limit = int(subscribe.number_arg(request.args, "limit", BUSIEST, BUSIEST_MAX,
                                         integer=True))
        try:
            busiest = presence.busiest(limit)
            processes = presence.processes()
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", str(error)) from None
        return jsonify(channels=[_presence(p) for p in busiest], processes=processes)

    @app.get("/channels/<channel>")
    def channel(channel: str):
        authorize()
        try:
            found = presence.channel(subscribe.checked_channel(channel))
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", str(error)) from None
        return jsonify(_presence(found))

    @app.get("/status")
    def status():
        authorize()
        name: Optional[str] = feed.resolve()
        if name is None or page.script is None:
            raise ApiError(503, "unavailable", "the status page cannot be served yet (the "
                           "broker is unreachable, or its script could not be built); see the log")
        return Response(page.html(name), content_type="text/html; charset=utf-8")

    @app.get("/status/status.<digest>.js")
    def status_script(digest: str):
        authorize()
        script = page.script
        if script is None or digest != script.digest:
            raise ApiError(404, "not found", "no such version of the status page's script")
        response = Response(script.body, content_type="application/javascript; charset=utf-8")
        response.headers["Cache-Control"] = "private, max-age=31536000, immutable"
        return response


def _guarded(work: Callable[[], None]) -> None:
    """Periodic work: whatever one round raises is logged, and the next round comes all the same."""
    try:
        work()
    except Exception:
        log.exception("periodic operations work failed; trying again next time")


def _presence(found: ChannelPresence) -> dict:
    return {"channel": found.channel, "subscribers": found.subscribers,
            "processes": found.processes}
