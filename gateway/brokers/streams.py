"""What the Redis brokers share: history in Redis streams, the gap fill, live delivery.

`RedisBroker` (one Redis) and `ClusterBroker` (a Redis Cluster) differ in how they publish and
how they hold their pub/sub connections; what a history entry or a live message becomes, how
the gap after a lost subscription is filled from history, and how their own published messages
skip being decoded again are the same, and written once, here.

A subclass sets, in its constructor: `_prefix`, `_raw_prefix`, `_live_prefix` (bytes),
`_max_length`, `_client` (a redis-py client that reads history), `_slots` (Slots for it),
`_channels` (subscribed channel -> id of its last event delivered), `_confirmations`,
`_own` and `_own_bytes` (see `_remember`), `_acked` (see `_acknowledged`), `_reads`
(SharedReads of `_read`), `_sink`, `_resync`; and `_channel_of(name)`; and calls
`_bound_sizes`.

Raw messages (anyone's `PUBLISH`) are outside input: one larger than the largest publish the
HTTP edge accepts is refused before it is decoded. History entries read back, and the
script's live copies with them, are bounded too, by the largest entry the publish script could
have written for a message the edge accepted.
"""

import logging
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from redis.exceptions import RedisError, ResponseError

from .. import redis_schema
from ..ids import ZERO, EventId, HistoryBounds, format_id, successor
from ..message import HistoryLost, InvalidMessage, Message, from_broker_payload
from .base import Broker, BrokerUnavailable, History, PublishResult
from .endpoints import refused
from .shared_reads import ChannelRead
from .slots import NoSlot

log = logging.getLogger("gateway.brokers.redis")

# Both Redis brokers' connections: timeouts (seconds), the listener's reconnect backoff, and the
# connections for commands (history reads, health checks; a URL's `max_connections` overrides
# it), apart from the pub/sub and publish connections.
CONNECT_TIMEOUT = 3.0
COMMAND_TIMEOUT = 5.0
CONFIRM_TIMEOUT = 5.0
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
POOL_SIZE = 50
PROBE = "sse-gateway-probe"  # the channel whose key and names the startup's checks use

def probe_permissions(client: Any, key: str, subscriptions: Sequence[Tuple[str, str]]) -> None:
    """Run on `client` (a redis.Redis) what the gateway needs an ACL user to be allowed: the
    history's commands on `key`, and each `(SUBSCRIBE or SSUBSCRIBE, name)`. Raises what
    Redis answers as a refusal (NOPERM; see endpoints.refused), nothing else: a command that
    fails for another reason (no such script, a key of another shard) was allowed."""
    for command in (("XINFO", "STREAM", key), ("EVALSHA", "0" * 40, 1, key)):
        try:
            client.execute_command(*command)
        except ResponseError as error:
            if refused(error):
                raise
    # Channels are permissions of their own (Redis 7 gives a new ACL user none).
    for kind, name in subscriptions:
        pubsub = client.pubsub()
        try:
            pubsub.execute_command(kind, name)
            pubsub.parse_response(block=True, timeout=CONNECT_TIMEOUT)  # a refusal is the reply
        except ResponseError as error:
            if refused(error):
                raise
        finally:
            pubsub.close()


def publish_refused(error: ResponseError, who: str) -> Exception:
    """What a publish that `who` (the Redis it ran on) refused raises: InvalidMessage for the
    publish script's own refusal of a message, else BrokerUnavailable."""
    why = redis_schema.refusal(error)
    if why is not None:
        return InvalidMessage(why)
    return BrokerUnavailable(f"{who} refused the publish: {error}")


def nothing_received() -> bool:
    return False


def received_check(connection: Any) -> Callable[[], bool]:
    """Whether the bytes of more replies are in the reader of a pub/sub `connection` (read from
    its socket, not parsed yet): the messages of publishes that Redis ran together arrive in
    one read. Looked up once per connection; the reply reader is redis-py's (hiredis, or its
    own parser's buffer)."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if reader is not None:
        return getattr(reader, "has_data", nothing_received)
    buffer = getattr(parser, "_buffer", None)
    unread = getattr(buffer, "unread_bytes", None)
    if unread is None:
        return nothing_received
    return lambda: unread() > 0

# How long a command may wait for one: far longer than a healthy Redis keeps a process's
# connections busy, reconnect storm included; only a Redis that does not answer reaches it.
_POOL_WAIT = 10.0
# The JSON of published messages that await their live copy (see _own) is forgotten past this:
# only copies that never come (their channel was left meanwhile) stay that long.
_OWN_BYTES = 4 * 1024 * 1024
# A message's JSON in history is at most this many times its publish body (`\u0000` for a
# control character), plus the fields' names.
_JSON_GROWTH = 6
_JSON_FIELDS = 1024


class StreamsBroker(Broker):
    """The part of a Redis broker that does not depend on how Redis is deployed."""

    _cluster = False  # the names of a Redis Cluster (redis_schema)
    _max_raw: Optional[int] = None  # bytes: the largest raw message delivered
    _max_entry: Optional[int] = None  # bytes: the largest history entry delivered

    def _bound_sizes(self, max_message_size: Optional[int]) -> None:
        """Bound raw messages by the largest publish body accepted (None: no bound)."""
        self._max_raw = max_message_size
        if max_message_size is not None:
            self._max_entry = max_message_size * _JSON_GROWTH + _JSON_FIELDS

    def _history_key(self, channel: str) -> str:
        return redis_schema.history_key(self._prefix, channel, self._cluster)

    def publish(self, message: Message) -> PublishResult:
        return self.publish_many((message,))[0]


    def _remember(self, messages: Sequence[Message],
                  items: List[Tuple[str, bytes]]) -> List[Tuple[str, bytes]]:
        """Note the messages whose live copy this process will receive; what it noted."""
        if self._own_bytes > _OWN_BYTES:  # copies that never came (their channel was left)
            self._own.clear()
            self._own_bytes = 0
        mine = []
        for message, item in zip(messages, items):
            if message.channel in self._channels:
                self._own[item] = message
                self._own_bytes += len(item[1])
                mine.append(item)
        return mine

    def own_on_the_way(self, channels: Iterable[str]) -> Dict[str, EventId]:
        acked = self._acked
        return {channel: acked[channel] for channel in channels if channel in acked} \
            if acked else {}

    def _acknowledged(self, items: List[Tuple[str, bytes]],
                      results: List[PublishResult]) -> None:
        """The publishes of `items` (channel, JSON), about to be acknowledged: each channel's
        last whose live copy has not been passed to the sink yet is noted (`_acked`, channel ->
        its id) until it is."""
        delivered = self._channels
        acked = self._acked
        for (channel, _), result in zip(items, results):
            if channel in delivered and result.event_id > delivered[channel] \
                    and result.event_id > acked.get(channel, ZERO):
                acked[channel] = result.event_id

    def _forget(self, items: List[Tuple[str, bytes]]) -> None:
        for item in items:
            if self._own.pop(item, None) is not None:
                self._own_bytes -= len(item[1])

    def history(self, positions: Dict[str, EventId],
                limit: Optional[int] = None) -> Dict[str, History]:
        histories, skipped = self._reads.history(positions, limit)
        self.skipped += skipped
        return histories

    def _read(self, positions: Dict[str, EventId], limit: Optional[int]) -> Dict[str, ChannelRead]:
        """Each channel's entries after its position (at most `limit`), all at one instant."""
        return self._read_at_once(positions, limit)

    def _read_at_once(self, positions: Dict[str, EventId],
                      limit: Optional[int]) -> Dict[str, ChannelRead]:
        # One transaction: every channel is read at the same instant, so replayed events of
        # several channels keep the order they were published in.
        # From the id after each position, rather than Redis' exclusive "(id", which is an
        # error after the largest id there is (a client may send it): nothing follows that one.
        starts = {channel: successor(after) for channel, after in positions.items()}
        page = limit or self._max_length
        found = {}
        with self._slot():
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    for channel, start in starts.items():
                        key = self._history_key(channel)
                        pipe.xinfo_stream(key)
                        if start is not None:
                            pipe.xrange(key, min=format_id(start), max="+", count=page)
                    replies = iter(pipe.execute(raise_on_error=False))
                for channel, start in starts.items():
                    info = next(replies)
                    entries = next(replies) if start is not None else []
                    for reply in (info, entries):
                        if isinstance(reply, Exception) and not _no_such_key(reply):
                            raise BrokerUnavailable(f"could not read history from Redis: {reply}")
                    bounds = (HistoryBounds(exists=False) if isinstance(info, Exception)
                              else redis_schema.bounds_from_xinfo(info))
                    entries = entries if bounds.exists else []
                    if limit is None and len(entries) == page:
                        entries, bounds = self._rest(channel, entries, bounds, page)
                    found[channel] = entries, bounds
            except RedisError as error:
                raise BrokerUnavailable(f"could not read history from Redis: {error}") from None
        return {channel: self._channel_read(channel, entries, bounds, limit)
                for channel, (entries, bounds) in found.items()}

    def _rest(self, channel: str, entries: List[Any], bounds: HistoryBounds,
              page: int) -> Tuple[List[Any], HistoryBounds]:
        """The pages after the first of a history longer than this gateway keeps (another
        publisher's --history-length may be larger), up to its end when the first was read.

        Entries trimmed meanwhile are reported as lost history (a larger `max_deleted`).
        """
        key = self._history_key(channel)
        entries = list(entries)
        batch = entries
        while len(batch) == page:
            start = successor(redis_schema.parse_stream_id(entries[-1][0]))
            if start is None or start > bounds.last:
                break
            with self._client.pipeline(transaction=True) as pipe:
                pipe.xinfo_stream(key)
                pipe.xrange(key, min=format_id(start), max=format_id(bounds.last), count=page)
                info, batch = pipe.execute(raise_on_error=False)
            if isinstance(batch, Exception) or isinstance(info, Exception):
                error = batch if isinstance(batch, Exception) else info
                if not _no_such_key(error):
                    raise BrokerUnavailable(f"could not read history from Redis: {error}")
                info, batch = None, []
            now = redis_schema.bounds_from_xinfo(info)
            lost = now.max_deleted if now.exists else bounds.last
            if lost >= start:
                bounds = replace(bounds, max_deleted=max(bounds.max_deleted, lost))
            entries.extend(batch)
        return entries, bounds

    def _channel_read(self, channel: str, entries: List[Any], bounds: HistoryBounds,
                      limit: Optional[int]) -> ChannelRead:
        messages, skipped = [], []
        for raw_id, fields in entries:
            message = self._decode_entry(channel, raw_id, fields)
            if message is None:
                skipped.append(redis_schema.parse_stream_id(raw_id))
            else:
                messages.append(message)
        complete = (limit is None or len(entries) < limit
                    or redis_schema.parse_stream_id(entries[-1][0]) >= bounds.last)
        return ChannelRead(messages, skipped, complete, bounds)

    def _bounds(self, key: str) -> HistoryBounds:
        try:
            with self._slot():
                info = self._client.xinfo_stream(key)
        except ResponseError as error:
            if _no_such_key(error):
                return HistoryBounds(exists=False)
            raise
        return redis_schema.bounds_from_xinfo(info)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """One of the pool's connections for the block, in turn (see slots.py)."""
        try:
            with self._slots.hold(_POOL_WAIT):
                yield
        except NoSlot as error:
            raise BrokerUnavailable(f"no Redis connection became free: {error}") from None

    def _decode_entry(self, channel: str, raw_id, fields) -> Optional[Message]:
        """A history entry as a message; None, logged, for one that is not valid."""
        payload = redis_schema.entry_payload(fields)
        try:
            if payload is None:
                raise InvalidMessage("it has no message")
            if self._max_entry is not None and len(payload) > self._max_entry:
                raise InvalidMessage(f"it is {len(payload)} bytes, more than a publish of "
                                     f"--max-message-size could have written")
            return from_broker_payload(channel, payload).with_id(
                redis_schema.parse_stream_id(raw_id))
        except InvalidMessage as error:
            log.warning("history entry %s of channel %r is malformed (%s); skipped",
                        raw_id, channel, error)
            return None


    def history_tail(self, channel: str) -> EventId:
        try:
            return self._bounds(self._history_key(channel)).last
        except RedisError as error:
            raise BrokerUnavailable(f"could not read history from Redis: {error}") from None


    def _fill_gaps(self, channels: Optional[Iterable[str]] = None) -> None:
        """Deliver what was published while the pub/sub connection was down (of `channels`,
        default all those subscribed).

        What was delivered live before no longer tells what history holds (the fill skips
        invalid entries, trimming may have lost some): `resync` hears, for each channel, where
        history stood when it was read.
        """
        positions = (dict(self._channels) if channels is None else
                     {c: self._channels[c] for c in channels if c in self._channels})
        histories, skipped = self._reads.history(positions, fresh=True)
        self.skipped += skipped
        lost = self._record_losses(histories)
        for channel, history in histories.items():
            bounds = history.bounds
            if channel in lost and not history.gap:
                # What history_gap cannot see: streams behind that event lost what followed.
                at = lost[channel]
                bounds = replace(bounds, last=max(bounds.last, at),
                                 max_deleted=max(bounds.max_deleted, at))
            if history.gap or channel in lost:
                log.warning("events of channel %r were lost from history while the pub/sub "
                            "connection was down (trimmed, or lost by a Redis that took over "
                            "before it had them); its subscribers are told to reload", channel)
                self._deliver_safely(HistoryLost(channel, bounds))
            for message in history.messages:
                self._deliver_safely(message)
            position = self._channels.get(channel, ZERO)
            if bounds is not None and bounds.exists:
                self._resync_safely(channel, max(position, bounds.last))
            else:
                # No history: with nothing delivered yet, every event of it is to come; else
                # ids from before may come again (a Redis whose clock went back), unknown.
                self._resync_safely(channel, ZERO if position == ZERO else None)

    def _record_losses(self, histories: Dict[str, History]) -> Dict[str, EventId]:
        """The channels whose history lacks the last event delivered from them, though it holds
        older ones and nothing recorded its deletion, and that event's id: Redis lost it, and
        maybe events after it. A replica promoted after a failover lacks the writes it had not
        received yet (replication is asynchronous), and new events may have been published
        to it since. (A history that begins after the event was recreated: history_gap sees
        that.)

        The loss is recorded in Redis (redis_schema.LOST_SCRIPT), for every gateway and every
        later resume to see, and so that no later event is given an id at or below it.
        """
        suspects = {}
        for channel, history in histories.items():
            bounds, position = history.bounds, self._channels.get(channel, ZERO)
            if bounds is not None and bounds.exists and position != ZERO \
                    and bounds.max_deleted < position and bounds.first <= position:
                suspects[channel] = position
        if not suspects:
            return {}
        with self._slot():
            with self._client.pipeline(transaction=False) as pipe:
                for channel, position in suspects.items():
                    pipe.xrange(self._history_key(channel),
                                min=format_id(position), max=format_id(position), count=1)
                replies = pipe.execute(raise_on_error=False)
            lost = {channel: position for (channel, position), reply
                    in zip(suspects.items(), replies) if reply == []}
            if lost:
                with self._client.pipeline(transaction=False) as pipe:
                    for channel, position in lost.items():
                        pipe.eval(redis_schema.LOST_SCRIPT, 1,
                                  self._history_key(channel),
                                  format_id(position))
                    pipe.execute()
        return lost

    def _resync_safely(self, channel: str, at: Optional[EventId]) -> None:
        if self._resync is None:
            return
        try:
            self._resync(channel, at)
        except Exception:
            log.exception("resynchronising channel %r failed", channel)


    def _on_payload(self, name: bytes, payload: bytes) -> None:
        """One pub/sub message: whatever goes wrong with it is logged, counted and skipped."""
        channel = self._channel_of(name)
        event_id = None
        try:
            if name.startswith(self._live_prefix):
                event_id, payload = redis_schema.split_live(payload)
                if self._max_entry is not None and len(payload) > self._max_entry:
                    # Live as history reads it back: any client may run the script.
                    raise InvalidMessage(f"it is {len(payload)} bytes, more than a publish "
                                         f"of --max-message-size could have written")
                mine = self._own.pop((channel, payload), None) if self._own else None
                if mine is None:
                    message = from_broker_payload(channel, payload).with_id(event_id)
                else:
                    self._own_bytes -= len(payload)
                    message = mine.with_id(event_id)
            else:
                # A raw message: whatever it says, it has no id and moves no position.
                if self._max_raw is not None and len(payload) > self._max_raw:
                    raise InvalidMessage(f"a raw message of {len(payload)} bytes, more than "
                                         f"--max-message-size ({self._max_raw} bytes)")
                message = from_broker_payload(channel, payload)
        except Exception as error:  # InvalidMessage, a live message without an id, or a bug
            self.refused += 1
            if isinstance(error, ValueError):
                log.warning("skipped a malformed message on channel %r: %s", channel, error)
            else:
                log.exception("reading a message on channel %r failed; skipped", channel)
            if event_id is not None and channel in self._channels \
                    and event_id > self._channels[channel]:
                self._resync_safely(channel, event_id)  # history holds it; nobody got it
            return
        self._deliver_safely(message)

    def _deliver_safely(self, message: Message) -> None:
        try:
            self._deliver(message)
        except Exception:
            self.refused += 1
            log.exception("delivering a message on channel %r failed; skipped", message.channel)

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
        if self._acked and message.event_id is not None:
            awaited = self._acked.get(channel)
            if awaited is not None and message.event_id >= awaited:
                del self._acked[channel]


def _no_such_key(error: Exception) -> bool:
    return isinstance(error, ResponseError) and "no such key" in str(error).lower()
