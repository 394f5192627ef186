"""The Redis broker: one pub/sub connection per process, history in Redis streams.

A single listener greenlet owns the pub/sub connection. A channel's two pub/sub names (the
gateway's live events and raw messages, see redis_schema) are SUBSCRIBEd when its first local
subscriber arrives and UNSUBSCRIBEd when the last one leaves. When the connection drops, the
listener reconnects with capped exponential backoff and jitter, resubscribes, and fills the
gap from each channel's stream before reading live messages again, dropping the live
duplicates by id.

No message can stop delivery: each one is handled under a guard that logs, counts and skips
it whatever goes wrong, and should the listener still end, a supervisor starts it again (it
resubscribes and fills the gap) while `check` reports the broker unavailable.

Settings that Redis refuses (a wrong password, an ACL user without the commands the gateway
needs; see endpoints.refusal) end the startup: `wait_ready` raises BrokerRefused. Once the
gateway has served, a refusal (Redis restarted with another password) is retried like any
outage, logged as an error that says what to fix: its clients are never told to go away.
"""

import logging
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import gevent
import gevent.event
import gevent.lock
import redis
from redis.exceptions import RedisError, ResponseError

from .. import redis_schema
from ..ids import ZERO, EventId
from ..message import Message
from .base import BrokerRefused, BrokerUnavailable, MessageSink, PublishResult, ResyncSink
from .endpoints import RedisEndpoint, refused
from .publishing import Job, Publishes
from .shared_reads import SharedReads
from .slots import Slots
from .streams import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    COMMAND_TIMEOUT,
    CONFIRM_TIMEOUT,
    CONNECT_TIMEOUT,
    POOL_SIZE,
    PROBE,
    StreamsBroker,
    nothing_received,
    probe_permissions,
    publish_refused,
    received_check,
)

log = logging.getLogger(__name__)


class RedisBroker(StreamsBroker):
    name = "redis"

    def __init__(self, endpoint: Union[str, RedisEndpoint], prefix: str = "",
                 history_length: int = 1000, history_age: float = 3600.0,
                 max_message_size: Optional[int] = None) -> None:
        """`endpoint`: a Redis URL, or where Sentinel says the master is (endpoints.py);
        `max_message_size`: the largest raw message delivered (None: any)."""
        if isinstance(endpoint, str):
            endpoint = RedisEndpoint(endpoint)
        self._endpoint = endpoint
        self._bound_sizes(max_message_size)
        self._prefix = prefix
        self._raw_prefix = prefix.encode("utf-8")
        self._live_prefix = redis_schema.live_channel(prefix, "").encode("utf-8")
        self._max_length = history_length
        self._max_age_ms = int(history_age * 1000)
        self._pool = endpoint.pool(
            max_connections=POOL_SIZE, socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
        )
        self._client = redis.Redis(connection_pool=self._pool)
        # Commands take turns for the pool's connections, rather than fail when all are busy.
        self._slots = Slots(self._pool.max_connections)
        # Publishes have a connection of their own, which concurrent ones share (publishing.py).
        self._publishes = Publishes(endpoint.pool(
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT,
        ), redis_schema.PUBLISH_SCRIPT)
        # RESP2: pub/sub replies are plain arrays that read_response returns (RESP3 would
        # route them to push handlers), and no socket timeout: the listener waits indefinitely.
        # Under Sentinel its connection asks the sentinels where the master is each time it
        # connects (see _connect), so a reconnect after a failover reaches the new master.
        self._listen_pool = endpoint.pool(
            socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=None,
            socket_keepalive=True, protocol=2,
        )
        # Subscribed channel -> id of the last event delivered from it.
        self._channels: Dict[str, EventId] = {}
        # What this process published on channels it serves, by channel and message JSON: its
        # live copy, back through pub/sub, is then not decoded and checked again.
        self._own: Dict[Tuple[str, bytes], Message] = {}
        self._own_bytes = 0
        self._acked: Dict[str, EventId] = {}
        self._reads = SharedReads(self._read, self._channels.get)
        self._confirmations: Dict[str, gevent.event.Event] = {}
        self._connection = None
        self._write_lock = gevent.lock.Semaphore()
        self._sink: Optional[MessageSink] = None
        self._resync: Optional[ResyncSink] = None
        self._listener: Optional[gevent.Greenlet] = None
        self._restart: Optional[gevent.Greenlet] = None
        self._restart_delay = BACKOFF_FIRST
        self._stopping = False
        self._failure: Optional[str] = None  # why the listener is being restarted
        self._connected_before = False
        self._ready = gevent.event.Event()
        self._refused = gevent.event.Event()  # Redis refused the settings before any serving
        self._waiting = 0  # wait_ready calls under way: they report a refusal, not the log
        self._handling = False
        self._received: Callable[[], bool] = nothing_received  # see received_check

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, sink: MessageSink, resync: Optional[ResyncSink] = None) -> None:
        self._sink = sink
        self._resync = resync
        self._start_listener()

    def stop(self) -> None:
        self._stopping = True
        for greenlet in (self._restart, self._listener):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=2)
        self._drop_connection()
        self._publishes.close()
        self._pool.disconnect()

    def wait_ready(self, timeout: float) -> bool:
        self._waiting += 1
        try:
            gevent.wait([self._ready, self._refused], timeout, count=1)
        finally:
            self._waiting -= 1
        if not self._ready.is_set() and self._refused.is_set():
            raise BrokerRefused(self._failure)
        return self._ready.is_set()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def more_received(self) -> bool:
        return self._received()

    def check(self) -> None:
        try:
            with self._slot():
                self._client.ping()
        except RedisError as error:
            if refused(error):
                raise BrokerUnavailable(f"Redis refused the credentials of --redis-url "
                                        f"({error})") from None
            raise BrokerUnavailable(f"Redis is unreachable: {error}") from None
        if self._failure is not None:
            raise BrokerUnavailable(self._failure)
        if not self._ready.is_set():
            raise BrokerUnavailable("the pub/sub connection to Redis is not established yet")

    # -- publishing and history -------------------------------------------------------------

    def publish_later(self, message: Message) -> Callable[[], PublishResult]:
        wait = self._submit((message,))
        return lambda: wait()[0]

    def publish_many(self, messages: Sequence[Message]) -> List[PublishResult]:
        return self._submit(messages)()

    def _submit(self, messages: Sequence[Message]) -> Callable[[], List[PublishResult]]:
        """Queue one run of the script for `messages`; what waits for its results."""
        items = [(message.channel, message.to_json().encode("utf-8")) for message in messages]
        mine = self._remember(messages, items)
        # Built by message.py, whose rule is stricter than the script's: it need not decode them.
        keys, args = redis_schema.publish_many_args(self._prefix, items, self._max_length,
                                                    self._max_age_ms, checked=True)
        job = self._publishes.submit(keys, args)
        return lambda: self._results(job, items, mine)

    def _results(self, job: Job, items: List[Tuple[str, bytes]],
                 mine: List[Tuple[str, bytes]]) -> List[PublishResult]:
        try:
            reply = self._publishes.wait(job)
        except ResponseError as error:
            self._forget(mine)
            raise publish_refused(error, "Redis") from None
        except (RedisError, OSError) as error:
            self._forget(mine)
            raise BrokerUnavailable(f"Redis refused or did not answer the publish: {error}") from None
        results = [PublishResult(event_id, receivers)
                   for event_id, receivers in redis_schema.parse_publish_many_reply(reply)]
        self._acknowledged(items, results)
        return results

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, channel: str) -> EventId:
        # The hub calls this once per channel, for the channel's first local subscriber.
        confirmed = self._confirmations[channel] = gevent.event.Event()
        try:
            self._send("SUBSCRIBE", channel)
            if not confirmed.wait(CONFIRM_TIMEOUT):
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

    def unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._acked.pop(channel, None)
        self._confirmations.pop(channel, None)
        try:
            self._send("UNSUBSCRIBE", channel)
        except BrokerUnavailable:
            pass  # the reconnect will not resubscribe it

    def _pubsub_names(self, *channels: str) -> Tuple[str, ...]:
        # Raw first, live last: the live name's confirmation then means both are in.
        return tuple(name for channel in channels for name in
                     (self._prefix + channel, redis_schema.live_channel(self._prefix, channel)))

    def _send(self, command: str, channel: str) -> None:
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable("not connected to Redis")
        with self._write_lock:
            try:
                connection.send_command(command, *self._pubsub_names(channel))
            except (RedisError, OSError) as error:
                raise BrokerUnavailable(f"could not {command} at Redis: {error}") from None

    # -- the listener and its supervisor ------------------------------------------------------

    def _start_listener(self) -> None:
        self._restart = None
        self._listener = gevent.spawn(self._listen_forever)
        self._listener.link(self._on_listener_end)

    def _on_listener_end(self, listener: gevent.Greenlet) -> None:
        """The supervisor: whatever ended the listener, start it again after a pause."""
        if self._stopping:
            return
        self.listener_restarts += 1
        reason = repr(listener.exception) if listener.exception is not None else "it returned"
        self._failure = f"the Redis pub/sub listener ended ({reason}) and is being restarted"
        self._ready.clear()
        self._drop_connection()
        delay, self._restart_delay = self._restart_delay, min(self._restart_delay * 2, BACKOFF_CAP)
        log.error("the Redis pub/sub listener ended (%s); restarting it in %.2f s, open streams "
                  "stay open", reason, delay)
        self._restart = gevent.spawn_later(delay, self._start_listener)

    def _listen_forever(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            try:
                if not self._connected_before:
                    self._check_settings()
                early = self._connect()
                if self._connected_before:
                    self.reconnects += 1
                    self._fill_gaps()
                for reply in early:
                    self._handle(reply)
                log.log(logging.WARNING if self._connected_before else logging.INFO,
                        "pub/sub connection to Redis established; %d channel(s) subscribed",
                        len(self._channels))
                self._connected_before = True
                delay = self._restart_delay = BACKOFF_FIRST
                self._failure = None
                self._ready.set()
                self._read_forever()
            except (RedisError, OSError, BrokerUnavailable) as error:
                self._ready.clear()
                self._drop_connection()
                if isinstance(error, BrokerRefused) or refused(error):
                    self._on_refusal(error, delay)
                    gevent.sleep(random.uniform(delay / 2, delay))
                    delay = min(delay * 2, BACKOFF_CAP)
                    continue
                # Full jitter keeps a fleet of gateways from reconnecting in lockstep.
                wait = random.uniform(delay / 2, delay)
                log.warning("lost the Redis pub/sub connection (%s); reconnecting in %.2f s, "
                            "open streams stay open", error, wait)
                gevent.sleep(wait)
                delay = min(delay * 2, BACKOFF_CAP)

    def _check_settings(self) -> None:
        """Raise BrokerRefused if Redis refuses the settings (asked before the first connect:
        the pub/sub connection's SUBSCRIBE of the first channel would come too late)."""
        def probe(client: redis.Redis) -> None:
            # The script's PUBLISH and the listener's SUBSCRIBE need both of a channel's names.
            probe_permissions(client, self._history_key(PROBE), [
                ("SUBSCRIBE", self._prefix + PROBE),
                ("SUBSCRIBE", redis_schema.live_channel(self._prefix, PROBE))])
        refusal = self._endpoint.refusal(CONNECT_TIMEOUT, probe)
        if refusal is not None:
            raise BrokerRefused(refusal)

    def _on_refusal(self, error: Exception, delay: float) -> None:
        if isinstance(error, BrokerRefused):  # at startup: wait_ready raises it
            self._failure = str(error)
            if not self._waiting and not self._refused.is_set():
                log.error("%s; trying again in %.2f s", self._failure, delay)
            self._refused.set()
            return
        self._failure = (f"Redis refused the credentials of --redis-url ({error}): give its "
                         f"password (or ACL user) as redis://USER:PASSWORD@host:port and "
                         f"restart, or restore the one it had")
        log.error("%s; trying again in %.2f s, open streams stay open", self._failure, delay)

    def _connect(self) -> List[Any]:
        """Connect and resubscribe; returns the messages that came before every confirmation.

        Those wait until the gap is filled: delivered first, a live event would move its
        channel's position past the events that the gap fill has yet to deliver.
        """
        # Made from the pool's settings, not by the pool: each connection the pool makes counts
        # against its max_connections until released, and a dropped one never is.
        pool = self._listen_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        connection.connect()
        self._connection = connection
        self._received = received_check(connection)
        channels = list(self._channels) + [c for c in self._confirmations if c not in self._channels]
        early: List[Any] = []
        if channels:
            with self._write_lock:
                connection.send_command("SUBSCRIBE", *self._pubsub_names(*channels))
            pending = {redis_schema.live_channel(self._prefix, c).encode("utf-8") for c in channels}
            while pending:
                reply = connection.read_response()
                if reply[0] == b"message":
                    early.append(reply)
                elif self._handle(reply) == "subscribe":
                    pending.discard(reply[1])
        return early

    def _read_forever(self) -> None:
        connection = self._connection
        while True:
            reply = connection.read_response()
            self._handling = True  # handling may wait (an unsubscribe), with replies unread
            try:
                self._handle(reply)
            finally:
                self._handling = False

    def _handle(self, reply) -> Optional[str]:
        if reply[0] == b"message":  # nearly every reply: told apart before anything is decoded
            self._on_payload(reply[1], reply[2])
            return "message"
        kind = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        if kind == "subscribe" and reply[1].startswith(self._live_prefix):
            confirmed = self._confirmations.get(self._channel_of(reply[1]))
            if confirmed is not None:
                confirmed.set()
        return kind

    def _channel_of(self, name: bytes) -> str:
        prefix = self._live_prefix if name.startswith(self._live_prefix) else self._raw_prefix
        return name[len(prefix):].decode("utf-8", errors="replace")

    def _drop_connection(self) -> None:
        self._received = nothing_received
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except (RedisError, OSError):
                pass

