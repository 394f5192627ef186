"""The gateway's figures for Prometheus (GET /metrics), with prometheus-client.

Nothing is counted per delivery. The hub, the broker and this module keep plain integer counts
(most of them also in /healthz); `Metrics.sample` brings the Prometheus objects up to date from
them, counters by what was added since the last sample and gauges by their value now, and a
scrape samples first, so a process's own figures are exact when scraped. Per message, the
broker's sink (`Metrics.sink`) counts the message and observes its publish-to-dispatch latency,
from the time in its id; `Hub.dispatch`, which has the channel's subscribers in hand, counts
the deliveries (one addition). Open streams are counted by walking the hub's subscribers when
sampling; long-polls, which hold their request, by the request (`polling`).

Under `--workers N` prometheus-client runs in its multiprocess mode: every worker writes its
values to files of its own in PROMETHEUS_MULTIPROC_DIR (which the supervisor makes and removes),
samples itself every second (`Operations` does), and a scrape answered by any worker adds up
the files of all of them. Gauges count the live workers only (the supervisor removes a dead
worker's gauge files); counters keep what dead workers counted.
"""

import os
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .brokers import Broker, MessageSink
from .hub import Hub, Subscriber
from .message import Message
from .transports import EventStream

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "Metrics", "TRANSPORTS"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TRANSPORTS = ("native", "padded", "long-poll", "jsonp")
DROP_REASONS = ("slow", "stalled", "memory")
RESET_REASONS = ("unknown-id", "history-lost")
# Seconds from publish to dispatch: well under a millisecond on one host, up to seconds for
# events filled in after the broker's connection came back.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)

disable_created_metrics()  # `_created` series double the output and say nothing here


class Metrics:
    """One process's figures: counted by the gateway, handed to prometheus-client on `sample`."""

    def __init__(self, hub: Hub, broker: Broker, multiprocess: bool = False) -> None:
        """`multiprocess`: one of the workers of --workers, whose supervisor set MULTIPROC_ENV."""
        self._hub = hub
        self._broker = broker
        self.multiprocess = multiprocess and bool(os.environ.get(MULTIPROC_ENV))
        # Counted here, per message or per request, never per delivery.
        self.published = 0
        self.dispatched = 0
        self.polls: Dict[str, int] = {"long-poll": 0, "jsonp": 0}
        self.auth_refusals: Dict[Tuple[str, str], int] = {}  # (endpoint, status) -> count
        self.publish_refused: Callable[[], int] = lambda: 0
        self.http_connections: Callable[[], int] = lambda: 0
        self._last: Dict[object, int] = {}

        if self.multiprocess:
            registry: Optional[CollectorRegistry] = None  # values go to the files
            self._registry = CollectorRegistry()
            MultiProcessCollector(self._registry)
        else:
            registry = self._registry = CollectorRegistry()
            ProcessCollector(registry=registry)

        def gauge(name: str, doc: str, labels: Tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode="livesum")

        def counter(name: str, doc: str, labels: Tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self._connections = gauge("sse_gateway_connections", "Open subscriber connections by "
                                  "transport: native and padded event streams, long-polls held "
                                  "(JSON and JSONP)", ("transport",))
        self._gauges: List[Tuple[Gauge, Callable[[], float]]] = [
            (gauge("sse_gateway_http_connections", "Open client connections, streams and idle "
                   "keep-alive ones included"), lambda: self.http_connections()),
            (gauge("sse_gateway_channels", "Channels with local subscribers (per process, "
                   "summed)"), lambda: hub.channel_count),
            (gauge("sse_gateway_buffered_bytes", "Bytes held for slow subscribers"),
             lambda: hub.buffered_bytes),
            (gauge("sse_gateway_broker_connected", "1 while the process's broker connection is "
                   "up (summed over processes)"), lambda: int(broker.connected)),
        ]
        self._subscribers = gauge("sse_gateway_subscribers", "Subscribers whose subscriptions "
                                  "are live")
        dropped = counter("sse_gateway_dropped", "Subscribers dropped: too far behind (slow), "
                          "a socket that took nothing for two heartbeats (stalled), over "
                          "--max-buffered-bytes (memory)", ("reason",))
        resets = counter("sse_gateway_resets", "gateway-reset events sent: a last event id the "
                         "gateway did not issue (unknown-id), events gone from history "
                         "(history-lost)", ("reason",))
        refused = counter("sse_gateway_refused", "Messages refused: publish requests that were "
                          "invalid, messages from the broker that were", ("source",))
        self._counters: List[Tuple[object, Callable[[], int]]] = [
            (counter("sse_gateway_events_published", "Events published through this process "
                     "(POST /publish)"), lambda: self.published),
            (counter("sse_gateway_events_dispatched", "Events the broker handed to this "
                     "process's subscribers (one per event, not per subscriber)"),
             lambda: self.dispatched),
            (counter("sse_gateway_deliveries", "Events handed to subscribers, one per event "
                     "and subscriber"), lambda: hub.deliveries),
            (dropped.labels("slow"), lambda: hub.dropped_slow - hub.dropped_stalled),
            (dropped.labels("stalled"), lambda: hub.dropped_stalled),
            (dropped.labels("memory"), lambda: hub.dropped_memory),
            (resets.labels("unknown-id"), lambda: hub.resets.get("unknown-id", 0)),
            (resets.labels("history-lost"),
             lambda: hub.resets.get("history-lost", 0) + hub.lost_deliveries),
            (refused.labels("publish"), lambda: self.publish_refused()),
            (refused.labels("broker"), lambda: broker.refused),
            (counter("sse_gateway_history_skipped", "Invalid history entries skipped on "
                     "replay"), lambda: broker.skipped),
            (counter("sse_gateway_broker_reconnects", "Broker connections established again "
                     "after one was lost"), lambda: broker.reconnects),
            (counter("sse_gateway_listener_restarts", "Restarts of a Redis listener that "
                     "ended"), lambda: broker.listener_restarts),
        ]
        self._auth = counter("sse_gateway_auth_refusals", "Requests refused for want of a valid "
                             "token or a local address (401, 403)", ("endpoint", "status"))
        self._latency = Histogram("sse_gateway_dispatch_latency_seconds", "From an event's "
                                  "publish (the time in its id) to its dispatch here",
                                  buckets=LATENCY_BUCKETS, registry=registry)
        for transport in TRANSPORTS:
            self._connections.labels(transport)
        for child, _ in self._counters:
            self._last[child] = 0

    def sink(self, dispatch: MessageSink) -> MessageSink:
        """`dispatch`, with each message counted and its latency observed (once per message)."""
        observe = self._latency.observe
        now = time.time

        def counted(message: Message) -> None:
            self.dispatched += 1
            event_id = message.event_id
            if event_id is not None:
                observe(max(0.0, now() - event_id[0] / 1000))
            dispatch(message)

        return counted

    def polling(self, jsonp: bool) -> "_Open":
        """Around a long-poll's request (`with`): it is an open connection of its transport
        meanwhile."""
        return _Open(self.polls, "jsonp" if jsonp else "long-poll")

    def refused_auth(self, endpoint: str, status: int) -> None:
        key = (endpoint, str(status))
        self.auth_refusals[key] = self.auth_refusals.get(key, 0) + 1

    def connections(self, subscribers: Optional[Set[Subscriber]] = None) -> Dict[str, int]:
        """Open connections by transport, now (from the hub's `subscribers()`, if given)."""
        counts = {"native": 0, "padded": 0, **self.polls}
        for subscriber in self._hub.subscribers() if subscribers is None else subscribers:
            if isinstance(subscriber, EventStream):
                counts["padded" if subscriber.options.padded else "native"] += 1
        return counts

    def figures(self) -> Dict[str, object]:
        """The process's counts now, as the status page's feed carries them."""
        hub, broker = self._hub, self._broker
        return {
            "broker": broker.name,
            "connected": broker.connected,
            "connections": self.connections(),
            "subscribers": hub.subscriber_count,
            "channels": hub.channel_count,
            "buffered_bytes": hub.buffered_bytes,
            "published": self.published,
            "dispatched": self.dispatched,
            "deliveries": hub.deliveries,
            "dropped": {"slow": hub.dropped_slow - hub.dropped_stalled,
                        "stalled": hub.dropped_stalled, "memory": hub.dropped_memory},
            "resets": {"unknown-id": hub.resets.get("unknown-id", 0),
                       "history-lost": hub.resets.get("history-lost", 0) + hub.lost_deliveries},
            "refused": self.publish_refused() + broker.refused,
        }

    def sample(self) -> None:
        """Bring the Prometheus values up to date with the counts."""
        subscribers = self._hub.subscribers()  # one walk of the hub for both
        for transport, value in self.connections(subscribers).items():
            self._connections.labels(transport).set(value)
        self._subscribers.set(len(subscribers))
        for gauge, read in self._gauges:
            gauge.set(read())
        for child, read in self._counters:
            self._advance(child, read())
        for (endpoint, status), value in list(self.auth_refusals.items()):
            self._advance(self._auth.labels(endpoint, status), value)

    def _advance(self, child, value: int) -> None:
        added = value - self._last.get(child, 0)
        if added > 0:
            child.inc(added)
            self._last[child] = value

    def exposition(self) -> bytes:
        """The text format: this process's figures, or every worker's under --workers."""
        self.sample()
        return generate_latest(self._registry)


class _Open:
    """Counts a connection open while in its `with` block (a class: a generator-based
    context manager costs a poll several times more)."""

    __slots__ = ("counts", "kind", "open")

    def __init__(self, counts: Dict[str, int], kind: str) -> None:
        self.counts = counts
        self.kind = kind
        self.open = False

    def start(self) -> "_Open":
        """Counted in (as the block begins), until `close`."""
        self.counts[self.kind] += 1
        self.open = True
        return self

    __enter__ = start

    def close(self) -> None:
        """Counted out (as the block ends, or earlier); once only."""
        if self.open:
            self.open = False
            self.counts[self.kind] -= 1

    def __exit__(self, *exc_info) -> None:
        self.close()
