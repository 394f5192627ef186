"""The Redis broker: one pub/sub connection per process, history in Redis streams.

A single listener greenlet owns the pub/sub connection. Channels are SUBSCRIBEd when their
first local subscriber arrives and UNSUBSCRIBEd when the last one leaves. When the connection
drops, the listener reconnects with capped exponential backoff and jitter, resubscribes, and
fills the gap from each channel's stream before reading live messages again, dropping the
live duplicates by id.
"""

import logging
import random
from typing import Dict, Optional

import gevent
import gevent.event
import gevent.lock
import redis
from redis.exceptions import RedisError, ResponseError

from .. import redis_schema
from ..ids import ZERO, EventId, HistoryBounds, format_id, history_gap
from ..message import HistoryLost, InvalidMessage, Message, from_broker_payload
from .base import Broker, BrokerUnavailable, History, MessageSink, PublishResult

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 3.0
_COMMAND_TIMEOUT = 5.0
_CONFIRM_TIMEOUT = 5.0
_BACKOFF_FIRST = 0.1
_BACKOFF_CAP = 5.0


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, url: str, prefix: str = "", history_length: int = 1000,
                 history_age: float = 3600.0) -> None:
        self._prefix = prefix
        self._max_length = history_length
        self._max_age_ms = int(history_age * 1000)
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_COMMAND_TIMEOUT
        )
        self._script = self._client.register_script(redis_schema.PUBLISH_SCRIPT)
        # RESP2: pub/sub replies are plain arrays that read_response returns (RESP3 would
        # route them to push handlers), and no socket timeout: the listener waits indefinitely.
        self._listen_pool = redis.ConnectionPool.from_url(
            url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=None,
            socket_keepalive=True, protocol=2,
        )
        # Subscribed channel -> id of the last event delivered from it.
        self._channels: Dict[str, EventId] = {}
        self._confirmations: Dict[str, gevent.event.Event] = {}
        self._connection = None
        self._write_lock = gevent.lock.Semaphore()
        self._sink: Optional[MessageSink] = None
        self._listener: Optional[gevent.Greenlet] = None
        self._ready = gevent.event.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, sink: MessageSink) -> None:
        self._sink = sink
        self._listener = gevent.spawn(self._listen_forever)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.kill(block=True, timeout=2)
        self._drop_connection()
        self._client.close()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def check(self) -> None:
        try:
            self._client.ping()
        except RedisError as error:
            raise BrokerUnavailable(f"Redis is unreachable: {error}") from None
        if not self._ready.is_set():
            raise BrokerUnavailable("the pub/sub connection to Redis is not established yet")

    # -- publishing and history -------------------------------------------------------------

    def publish(self, message: Message) -> PublishResult:
        keys, args = redis_schema.publish_args(
            self._prefix, message.channel, message.to_json(), self._max_length, self._max_age_ms
        )
        try:
            reply = self._script(keys=keys, args=args)
        except RedisError as error:
            raise BrokerUnavailable(f"Redis refused or did not answer the publish: {error}") from None
        event_id, receivers = redis_schema.parse_publish_reply(reply)
        return PublishResult(event_id, receivers)

    def history(self, positions: Dict[str, EventId]) -> Dict[str, History]:
        # One transaction: every channel is read at the same instant, so replayed events of
        # several channels keep the order they were published in.
        channels = list(positions)
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for channel in channels:
                    key = redis_schema.history_key(self._prefix, channel)
                    pipe.xinfo_stream(key)
                    # History is capped (exactly) at its length: one read takes all of it.
                    pipe.xrange(key, min="(" + format_id(positions[channel]), max="+")
                replies = pipe.execute(raise_on_error=False)
        except RedisError as error:
            raise BrokerUnavailable(f"could not read history from Redis: {error}") from None
        result = {}
        for index, channel in enumerate(channels):
            info, entries = replies[2 * index], replies[2 * index + 1]
            for reply in (info, entries):
                if isinstance(reply, Exception) and not _no_such_key(reply):
                    raise BrokerUnavailable(f"could not read history from Redis: {reply}")
            bounds = (HistoryBounds(exists=False) if isinstance(info, Exception)
                      else redis_schema.bounds_from_xinfo(info))
            messages = [self._decode_entry(channel, raw_id, fields)
                        for raw_id, fields in (entries if bounds.exists else [])]
            result[channel] = History([m for m in messages if m is not None],
                                      history_gap(positions[channel], bounds), bounds)
        return result

    def _bounds(self, key: str) -> HistoryBounds:
        try:
            info = self._client.xinfo_stream(key)
        except ResponseError as error:
            if _no_such_key(error):
                return HistoryBounds(exists=False)
            raise
        return redis_schema.bounds_from_xinfo(info)

    def _decode_entry(self, channel: str, raw_id, fields) -> Optional[Message]:
        payload = redis_schema.entry_payload(fields)
        event_id = redis_schema.parse_stream_id(raw_id)
        if payload is None:
            log.warning("history entry %s of channel %r has no message; skipped", raw_id, channel)
            return None
        try:
            return from_broker_payload(channel, payload).with_id(event_id)
        except InvalidMessage as error:
            log.warning("history entry %s of channel %r is malformed (%s); skipped",
                        raw_id, channel, error)
            return None

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, channel: str) -> EventId:
        # The hub calls this once per channel, for the channel's first local subscriber.
        confirmed = self._confirmations[channel] = gevent.event.Event()
        try:
            self._send("SUBSCRIBE", channel)
            if not confirmed.wait(_CONFIRM_TIMEOUT):
                raise BrokerUnavailable(f"Redis did not confirm the subscription to {channel!r}")
            # Read the tail only now: every later event reaches us live.
            tail = self.history_tail(channel)
        except BrokerUnavailable:
            self._confirmations.pop(channel, None)
            self._channels.pop(channel, None)
            raise
        self._channels[channel] = max(self._channels.get(channel, ZERO), tail)
        del self._confirmations[channel]
        return self._channels[channel]

    def history_tail(self, channel: str) -> EventId:
        try:
            return self._bounds(redis_schema.history_key(self._prefix, channel)).last
        except RedisError as error:
            raise BrokerUnavailable(f"could not read history from Redis: {error}") from None

    def unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._confirmations.pop(channel, None)
        try:
            self._send("UNSUBSCRIBE", channel)
        except BrokerUnavailable:
            pass  # the reconnect will not resubscribe it

    def _send(self, command: str, channel: str) -> None:
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable("not connected to Redis")
        with self._write_lock:
            try:
                connection.send_command(command, self._prefix + channel)
            except (RedisError, OSError) as error:
                raise BrokerUnavailable(f"could not {command} at Redis: {error}") from None

    # -- the listener ---------------------------------------------------------------------------

    def _listen_forever(self) -> None:
        delay = _BACKOFF_FIRST
        connected_before = False
        while True:
            try:
                self._connect()
                if connected_before:
                    self._fill_gaps()
                log.log(logging.WARNING if connected_before else logging.INFO,
                        "pub/sub connection to Redis established; %d channel(s) subscribed",
                        len(self._channels))
                connected_before = True
                delay = _BACKOFF_FIRST
                self._ready.set()
                self._read_forever()
            except (RedisError, OSError, BrokerUnavailable) as error:
                self._ready.clear()
                self._drop_connection()
                # Full jitter keeps a fleet of gateways from reconnecting in lockstep.
                wait = random.uniform(delay / 2, delay)
                log.warning("lost the Redis pub/sub connection (%s); reconnecting in %.2f s, "
                            "open streams stay open", error, wait)
                gevent.sleep(wait)
                delay = min(delay * 2, _BACKOFF_CAP)

    def _connect(self) -> None:
        connection = self._listen_pool.make_connection()
        connection.connect()
        self._connection = connection
        channels = list(self._channels) + [c for c in self._confirmations if c not in self._channels]
        if channels:
            with self._write_lock:
                connection.send_command("SUBSCRIBE", *[self._prefix + c for c in channels])
            pending = set(channels)
            while pending:
                reply = connection.read_response()
                if self._handle(reply) == "subscribe":
                    pending.discard(self._channel_of(reply[1]))

    def _fill_gaps(self) -> None:
        """Deliver what was published while the pub/sub connection was down."""
        for channel, history in self.history(dict(self._channels)).items():
            if history.gap:
                log.warning("events of channel %r were trimmed from history while the pub/sub "
                            "connection was down; its subscribers are told to reload", channel)
                self._deliver(HistoryLost(channel, history.bounds))
            for message in history.messages:
                self._deliver(message)

    def _read_forever(self) -> None:
        connection = self._connection
        while True:
            self._handle(connection.read_response())

    def _handle(self, reply) -> Optional[str]:
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "message":
            self._on_payload(self._channel_of(reply[1]), reply[2])
        elif kind == "subscribe":
            confirmed = self._confirmations.get(self._channel_of(reply[1]))
            if confirmed is not None:
                confirmed.set()
        return kind

    def _on_payload(self, channel: str, payload: bytes) -> None:
        try:
            message = from_broker_payload(channel, payload)
        except InvalidMessage as error:
            log.warning("skipped a malformed message on channel %r: %s", channel, error)
            return
        self._deliver(message)

    def _deliver(self, message: Message) -> None:
        channel = message.channel
        if channel not in self._channels and channel not in self._confirmations:
            return  # unsubscribed meanwhile
        if message.event_id is not None:
            if message.event_id <= self._channels.get(channel, ZERO):
                return  # already delivered by a gap fill
            self._channels[channel] = message.event_id
        if self._sink is not None:
            self._sink(message)

    def _channel_of(self, raw: bytes) -> str:
        name = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        return name[len(self._prefix):]

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except (RedisError, OSError):
                pass


def _no_such_key(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "no such key" in str(error).lower()
