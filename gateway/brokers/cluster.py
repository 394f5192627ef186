"""The Redis Cluster broker: sharded pub/sub, one pub/sub connection per shard in use.

A channel's history stream and live channel carry the channel as hash tag (redis_schema), so
both are in one slot and the publish script runs on the shard that owns it, and sends the
event there with SPUBLISH. A process SSUBSCRIBEs each channel it serves on the master that owns
the channel's slot, over one connection per such master (a `_Shard`, with its own listener
greenlet), never one per channel or client. A channel's raw name (flask-sse style PUBLISH,
which a cluster forwards to every node) is SUBSCRIBEd on the same connection.

A channel leaves its shard when its slot does: Redis 7 tells a subscriber, with an
`sunsubscribe` it did not ask for, that the slot moved; an SSUBSCRIBE sent to a node that
does not own the slot is answered MOVED; a master that dies takes its connection with it, and
its replica takes its slots over. In each case the slot's new owner is looked up (the MOVED
answer names it, else the cluster's slot map is read again), the channel is SSUBSCRIBEd there
and, once confirmed, its gap is filled from history exactly as RedisBroker does after a
reconnect (streams.py): the events it missed are delivered in order, the live duplicates are
dropped by id, and HistoryLost goes out only when history itself lacks them.

A publish runs the script once per slot of its events, so a batch is atomic per slot: each
run is queued on the publish connection of the master that owns the slot (publishing.py), where
the runs of concurrent and pipelined publishes leave together, one write and one round trip per
master at a time, the masters' in flight at once. A channel is one slot, on one master, in one
queue: its publishes keep their order. A run answered MOVED or ASK was not run; it is sent again
through redis-py's RedisCluster, which follows both (as history reads do) and learns the new
owner, when its result is taken. A master that does not answer fails only the runs queued on it.
"""

import logging
import os
import random
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import gevent
import gevent.event
import gevent.lock
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError, ResponseError
from redis.retry import Retry

from .. import redis_schema
from ..cluster_nodes import (
    cluster_client,
    connection_settings,
    credentials_refused,
    permissions_refused,
)
from ..ids import ZERO, EventId
from ..message import Message
from .base import BrokerRefused, BrokerUnavailable, MessageSink, PublishResult, ResyncSink
from .publishing import Job, Publishes
from .shared_reads import ChannelRead, SharedReads
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

# The client name of the pub/sub connections (CLIENT LIST shows one per process and shard).
PUBSUB_NAME = "sse-gateway-pubsub"

Address = Tuple[str, int]


class _Run(NamedTuple):
    """One slot's run of the publish script, queued on its master's publish connection."""

    slot: int
    indices: List[int]  # of the messages it publishes, in their order
    keys: List[str]
    args: List[Any]
    publishes: Publishes
    job: Job


class ClusterBroker(StreamsBroker):
    name = "redis-cluster"
    _cluster = True

    def __init__(self, urls: str, prefix: str = "", history_length: int = 1000,
                 history_age: float = 3600.0, max_message_size: Optional[int] = None) -> None:
        """`max_message_size`: the largest raw message delivered (None: any)."""
        self._urls = urls
        self._bound_sizes(max_message_size)
        self._prefix = prefix
        self._raw_prefix = prefix.encode("utf-8")
        self._live_prefix = redis_schema.live_channel(prefix, "", cluster=True)[:-1].encode("utf-8")
        self._max_length = history_length
        self._max_age_ms = int(history_age * 1000)
        self._settings = connection_settings(urls)
        self._cluster_client: Optional[RedisCluster] = None
        self._slots = Slots(POOL_SIZE)
        self._channels: Dict[str, EventId] = {}
        self._confirmations: Dict[str, gevent.event.Event] = {}
        self._own: Dict[Tuple[str, bytes], Message] = {}
        self._own_bytes = 0
        self._acked: Dict[str, EventId] = {}
        self._reads = SharedReads(self._read, self._channels.get)
        self._sink: Optional[MessageSink] = None
        self._resync: Optional[ResyncSink] = None
        self._shards: Dict[Address, _Shard] = {}
        self._owner: Dict[str, _Shard] = {}  # subscribed channel -> the shard it is on
        self._listeners: Dict[gevent.Greenlet, _Shard] = {}  # a shard's listener -> the shard
        self._publishes: Dict[Address, Publishes] = {}
        # Slot -> its master's publishes, as the slot map said when first asked (redis-py's
        # look-up costs more than the rest of a publish's routing): forgotten when the map is
        # read again, and a slot's when a publish there is answered MOVED.
        self._slot_publishes: Dict[int, Publishes] = {}
        self._map_lock = gevent.lock.Semaphore()
        self._ready = gevent.event.Event()
        self._refused = gevent.event.Event()  # the seed nodes refused the URL's credentials
        self._starter: Optional[gevent.Greenlet] = None
        self._stopping = False
        self._failure: Optional[str] = "the cluster's slot map is not read yet"

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def _client(self) -> RedisCluster:
        client = self._cluster_client
        if client is None:
            raise BrokerUnavailable(self._failure or "not connected to the Redis Cluster")
        return client

    def start(self, sink: MessageSink, resync: Optional[ResyncSink] = None) -> None:
        self._sink = sink
        self._resync = resync
        self._starter = gevent.spawn(self._connect_cluster)

    def _connect_cluster(self) -> None:
        """Read the slot map from a seed node, again until one answers and allows what the
        gateway needs."""
        delay = BACKOFF_FIRST
        while self._cluster_client is None:
            # First what one seed allows (quick, and what a refused start waits for), then the
            # slot map.
            refusal = permissions_refused(self._urls, CONNECT_TIMEOUT, self._probe)
            if refusal is not None:
                self._refuse(f"the Redis Cluster refused the ACL user of --redis-url "
                             f"({refusal}): give it the commands, keys and channels the "
                             f"gateway needs", delay)
            else:
                try:
                    # No retries of its own: a script sent again after a lost connection may
                    # run twice. MOVED and ASK are followed all the same.
                    self._cluster_client = cluster_client(
                        self._urls, socket_connect_timeout=CONNECT_TIMEOUT,
                        socket_timeout=COMMAND_TIMEOUT, max_connections=POOL_SIZE,
                        retry=Retry(NoBackoff(), 0))
                    break
                except (RedisError, RedisClusterException) as error:
                    refusal = credentials_refused(self._urls, CONNECT_TIMEOUT)
                    if refusal is not None:
                        self._refuse(f"the Redis Cluster refused the credentials of "
                                     f"--redis-url ({refusal}): give the nodes' password as "
                                     f"redis://:PASSWORD@host:port", delay)
                    else:
                        self._failure = f"no seed node of the Redis Cluster answered: {error}"
                        log.warning("%s; trying again in %.2f s", self._failure, delay)
            gevent.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, BACKOFF_CAP)
        self._failure = None
        log.info("Redis Cluster slot map read: %d master(s)", len(self._client.get_primaries()))
        self._ready.set()

    def _refuse(self, failure: str, delay: float) -> None:
        self._failure = failure
        log.error("%s; trying again in %.2f s", failure, delay)
        self._refused.set()

    def _probe(self, client: redis.Redis) -> None:
        # The script's SPUBLISH and the shard listeners' SSUBSCRIBE need the live channel, a
        # raw publisher's messages SUBSCRIBE.
        probe_permissions(client, self._history_key(PROBE), [
            ("SSUBSCRIBE", redis_schema.live_channel(self._prefix, PROBE, cluster=True)),
            ("SUBSCRIBE", self._prefix + PROBE)])

    def stop(self) -> None:
        self._stopping = True
        if self._starter is not None:
            self._starter.kill(block=True, timeout=2)
        for shard in list(self._shards.values()):
            shard.stop()
        for publishes in self._publishes.values():
            publishes.close()
        if self._cluster_client is not None:
            self._cluster_client.close()

    def wait_ready(self, timeout: float) -> bool:
        gevent.wait([self._ready, self._refused], timeout, count=1)
        if not self._ready.is_set() and self._refused.is_set():
            raise BrokerRefused(self._failure)
        return self._ready.is_set()

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and all(s.ready for s in list(self._shards.values()))

    def more_received(self) -> bool:
        # The sink is called by the listener of the shard whose message it is: that shard's
        # reader is asked, whichever other shard's listener yielded in a dispatch meanwhile.
        shard = self._listeners.get(gevent.getcurrent())
        return shard is not None and shard.received()

    def check(self) -> None:
        client = self._client
        for node in client.get_primaries():
            try:
                with self._slot():
                    client.get_redis_connection(node).ping()
            except RedisError as error:
                self._refresh_later()  # a replica may have taken its place
                raise BrokerUnavailable(f"the Redis Cluster master {node.name} is unreachable: "
                                        f"{error}") from None
        for shard in list(self._shards.values()):
            if shard.failure is not None:
                raise BrokerUnavailable(shard.failure)

    # -- publishing and history -------------------------------------------------------------

    def publish_later(self, message: Message) -> Callable[[], PublishResult]:
        wait = self._submit((message,))
        return lambda: wait()[0]

    def publish_many(self, messages: Sequence[Message]) -> List[PublishResult]:
        return self._submit(messages)()

    def _submit(self, messages: Sequence[Message]) -> Callable[[], List[PublishResult]]:
        """Queue one run of the script per slot of `messages`, each on the publish connection
        of the slot's master (behind the runs queued there before it); what waits for the
        results. The shards' runs are in flight at once, each shard's with its queue."""
        items = [(message.channel, message.to_json().encode("utf-8")) for message in messages]
        mine = self._remember(messages, items)
        slots_of: Dict[str, int] = {}  # a batch names few channels, each many times
        by_slot: Dict[int, List[int]] = {}
        for index, (channel, _) in enumerate(items):
            slot = slots_of.get(channel)
            if slot is None:
                slot = slots_of[channel] = self._slot_of(channel)
            by_slot.setdefault(slot, []).append(index)
        runs: List[_Run] = []
        try:
            for slot, indices in by_slot.items():
                keys, args = redis_schema.publish_many_args(
                    self._prefix, [items[i] for i in indices], self._max_length,
                    self._max_age_ms, checked=True, cluster=True)
                publishes = self._slot_publishes.get(slot) or self._publishes_of(slot)
                runs.append(_Run(slot, indices, keys, args, publishes,
                                 publishes.submit(keys, args)))
        except (BrokerUnavailable, RedisError, RedisClusterException) as error:
            failure = self._failed(error, mine)
            # What was queued already is published all the same.
            return lambda: self._results(runs, items, mine, failure)
        return lambda: self._results(runs, items, mine)

    def _results(self, runs: List[_Run], items: List[Tuple[str, bytes]],
                 mine: List[Tuple[str, bytes]],
                 failure: Optional[Exception] = None) -> List[PublishResult]:
        """Every run's results in the messages' order; raises the first failure once every
        run is answered (the slots that were published stay published)."""
        results: List[Any] = [None] * len(items)
        for run in runs:
            try:
                reply = self._reply(run)
            except (BrokerUnavailable, RedisError, RedisClusterException, OSError) as error:
                failure = failure or self._failed(error, mine)
                continue
            for index, (event_id, receivers) in zip(run.indices,
                                                    redis_schema.parse_publish_many_reply(reply)):
                results[index] = PublishResult(event_id, receivers)
        if failure is not None:
            raise failure
        self._acknowledged(items, results)
        return results

    def _reply(self, run: _Run) -> Any:
        try:
            return run.publishes.wait(run.job)
        except AskError as error:
            # Not run: the slot moved (MOVED) or is moving (ASK). The cluster client follows
            # both, ASKING the importing node for a key that already went there, and learns a
            # MOVED slot's owner (the next publishes go there).
            if isinstance(error, MovedError):
                self._slot_publishes.pop(run.slot, None)
            with self._slot():
                return self._client.eval(redis_schema.PUBLISH_SCRIPT, len(run.keys), *run.keys,
                                         *run.args)

    def _failed(self, error: Exception, mine: List[Tuple[str, bytes]]) -> Exception:
        """What a publish that failed with `error` raises."""
        self._forget(mine)
        if isinstance(error, BrokerUnavailable):
            return error
        if isinstance(error, ResponseError):
            return publish_refused(error, "the Redis Cluster")
        self._refresh_later()
        return BrokerUnavailable(f"the Redis Cluster refused or did not answer the publish: "
                                 f"{error}")

    def _publishes_of(self, slot: int) -> Publishes:
        node = self._client.nodes_manager.get_node_from_slot(slot)
        publishes = self._slot_publishes[slot] = self._publishes_at((node.host, node.port))
        return publishes

    def _publishes_at(self, address: Address) -> Publishes:
        publishes = self._publishes.get(address)
        if publishes is None:
            pool = redis.ConnectionPool(**self._node_settings(address),
                                        socket_connect_timeout=CONNECT_TIMEOUT,
                                        socket_timeout=COMMAND_TIMEOUT)
            publishes = self._publishes[address] = Publishes(pool, redis_schema.PUBLISH_SCRIPT)
        return publishes

    def _node_settings(self, address: Address) -> Dict[str, Any]:
        return {**self._settings, "host": address[0], "port": address[1]}

    def _read(self, positions: Dict[str, EventId], limit: Optional[int]) -> Dict[str, ChannelRead]:
        # A transaction covers one slot: each slot's channels are read at one instant, and
        # channels of different shards have no common order anyway.
        by_slot: Dict[int, Dict[str, EventId]] = {}
        for channel, after in positions.items():
            by_slot.setdefault(self._slot_of(channel), {})[channel] = after
        found: Dict[str, ChannelRead] = {}
        for group in by_slot.values():
            try:
                found.update(self._read_at_once(group, limit))
            except BrokerUnavailable:
                # The slot moved, or its master failed over: read it where the map says now.
                self._refresh()
                found.update(self._read_at_once(group, limit))
        return found

    def _slot_of(self, channel: str) -> int:
        return key_slot(self._history_key(channel).encode("utf-8"))

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, channel: str) -> EventId:
        confirmed = self._confirmations[channel] = gevent.event.Event()
        try:
            self._place(channel, self._shard_for(channel))
            if not confirmed.wait(CONFIRM_TIMEOUT):
                raise BrokerUnavailable(f"the Redis Cluster did not confirm the subscription to "
                                        f"{channel!r}")
            tail = self.history_tail(channel)
        except BrokerUnavailable:
            self._confirmations.pop(channel, None)
            self._channels.pop(channel, None)
            self._leave(channel)
            raise
        self._channels[channel] = max(self._channels.get(channel, ZERO), tail)
        del self._confirmations[channel]
        return self._channels[channel]

    def unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._acked.pop(channel, None)
        self._confirmations.pop(channel, None)
        self._leave(channel)

    def _leave(self, channel: str) -> None:
        shard = self._owner.pop(channel, None)
        if shard is not None:
            shard.release(channel, live=True)

    def _wanted(self, channel: str) -> bool:
        return channel in self._channels or channel in self._confirmations

    def _shard_for(self, channel: str) -> "_Shard":
        try:
            node = self._client.nodes_manager.get_node_from_slot(self._slot_of(channel))
        except (RedisError, RedisClusterException) as error:
            raise BrokerUnavailable(f"no master of the Redis Cluster serves the slot of "
                                    f"{channel!r}: {error}") from None
        return self._shard_at((node.host, node.port))

    def _shard_at(self, address: Address) -> "_Shard":
        shard = self._shards.get(address)
        if shard is None or shard.retired:
            shard = self._shards[address] = _Shard(self, address)
        return shard

    def _place(self, channel: str, shard: "_Shard", live_gone: bool = False) -> None:
        """Serve `channel` from `shard`; `live_gone`: its old shard unsubscribed it already."""
        old = self._owner.get(channel)
        if old is shard:
            shard.take(channel)  # subscribe it again where it is
            return
        if old is not None:
            old.release(channel, live=not live_gone)
        self._owner[channel] = shard
        shard.take(channel)

    def _moved(self, channels: List[str], address: Address) -> None:
        """The node asked answered MOVED for these channels' slot: subscribe them where it says."""
        self._refresh_later()
        if channels:
            gevent.spawn(self._move, channels, address)

    def _move(self, channels: List[str], address: Address) -> None:
        target = self._shard_at(address)
        for channel in channels:
            target.bounce(channel)
            if self._wanted(channel):
                self._place(channel, target, live_gone=True)

    def _relocate(self, channels: List[str], shard: "_Shard") -> None:
        """Read the slot map again and serve each of `channels` (on `shard` until now) from
        the master that owns its slot now."""
        self._refresh()
        for channel in channels:
            if self._wanted(channel) and self._owner.get(channel) is shard:
                try:
                    target = self._shard_for(channel)
                except BrokerUnavailable as error:
                    log.warning("%s; trying again", error)
                    continue
                if target is not shard:
                    self._place(channel, target, live_gone=True)

    def _refresh(self) -> None:
        client = self._cluster_client
        if client is None:
            return
        with self._map_lock:
            try:
                client.nodes_manager.initialize()
            except (RedisError, RedisClusterException) as error:
                log.warning("could not read the Redis Cluster's slot map: %s", error)
            self._slot_publishes.clear()

    def _refresh_later(self) -> None:
        if not self._map_lock.locked():
            gevent.spawn(self._refresh)

    def _shard_ended(self, shard: "_Shard") -> None:
        self._listeners.pop(shard.listener, None)
        if self._shards.get(shard.address) is shard:
            del self._shards[shard.address]

    def _channel_of(self, name: bytes) -> str:
        if name.startswith(self._live_prefix):
            return name[len(self._live_prefix):-1].decode("utf-8", errors="replace")
        return name[len(self._raw_prefix):].decode("utf-8", errors="replace")


class _Shard:
    """One pub/sub connection to one master, for the channels whose slots it owns."""

    def __init__(self, broker: ClusterBroker, address: Address) -> None:
        self.broker = broker
        self.address = address
        self.name = f"{address[0]}:{address[1]}"
        self.channels: Set[str] = set()
        self.connection = None
        self.received: Callable[[], bool] = nothing_received  # the connection's received_check
        self.ready = False
        self.retired = False
        self.failure: Optional[str] = None
        self.handling = False
        self._write_lock = gevent.lock.Semaphore()
        self._leaving: Dict[bytes, int] = {}  # our own SUNSUBSCRIBEs not yet answered
        self._bounces: Dict[str, int] = {}
        self._connected_before = False
        self.listener = gevent.spawn(self._listen_forever)
        broker._listeners[self.listener] = self

    def stop(self) -> None:
        self.retired = True
        self.listener.kill(block=True, timeout=2)
        self._drop()

    # -- what the broker asks ---------------------------------------------------------------

    def take(self, channel: str) -> None:
        self.channels.add(channel)
        if self.connection is not None:
            self._send([channel])

    def release(self, channel: str, live: bool) -> None:
        self.channels.discard(channel)
        connection = self.connection
        if connection is None:
            return
        raw, name = self._names(channel)
        try:
            with self._write_lock:
                connection.send_command("UNSUBSCRIBE", raw)
                if live:
                    self._leaving[name] = self._leaving.get(name, 0) + 1
                    connection.send_command("SUNSUBSCRIBE", name)
        except (RedisError, OSError):
            pass  # the connection is lost: nothing of it stays subscribed

    def bounce(self, channel: str) -> None:
        """Wait a little before subscribing a channel that moved more than once just now (while
        a slot migrates, both nodes may say MOVED to the other for a moment)."""
        times = self._bounces[channel] = self._bounces.get(channel, 0) + 1
        if times > 1:
            gevent.sleep(min(0.01 * 2 ** times, 1.0))

    # -- the listener ---------------------------------------------------------------------------

    def _names(self, channel: str) -> Tuple[str, bytes]:
        prefix = self.broker._prefix
        return (prefix + channel,
                redis_schema.live_channel(prefix, channel, cluster=True).encode("utf-8"))

    def _send(self, channels: List[str]) -> None:
        """SUBSCRIBE the raw names and SSUBSCRIBE the live ones (one command each: they may be
        of different slots); the live confirmation comes last."""
        commands = []
        for channel in channels:
            raw, live = self._names(channel)
            commands.append(("SUBSCRIBE", raw))
            commands.append(("SSUBSCRIBE", live))
        connection = self.connection
        if connection is None:
            return
        try:
            with self._write_lock:
                connection.send_packed_command(connection.pack_commands(commands))
        except (RedisError, OSError) as error:
            log.warning("could not subscribe at %s (%s); the reconnect will", self.name, error)

    def _listen_forever(self) -> None:
        broker = self.broker
        delay = BACKOFF_FIRST
        while not self.retired and not broker._stopping:
            try:
                early, confirmed = self._connect()
                filled = [c for c in confirmed if c in broker._channels]
                if filled:
                    if self._connected_before:
                        broker.reconnects += 1
                    broker._fill_gaps(filled)
                for reply in early:
                    self._handle(reply)
                log.log(logging.WARNING if self._connected_before else logging.INFO,
                        "pub/sub connection to Redis Cluster master %s established; %d "
                        "channel(s) subscribed", self.name, len(confirmed))
                self._connected_before = True
                self.failure = None
                self.ready = True
                delay = BACKOFF_FIRST
                self._read_forever()
            except Exception as error:  # Redis, or a bug: the shard starts again all the same
                if not isinstance(error, (RedisError, OSError, BrokerUnavailable)):
                    broker.listener_restarts += 1
                    log.exception("the pub/sub listener of Redis Cluster master %s failed",
                                  self.name)
                self.ready = False
                self._drop()
                self.failure = (f"the pub/sub connection to Redis Cluster master {self.name} "
                                f"is down: {error}")
                wait = random.uniform(delay / 2, delay)
                log.warning("%s; looking up its slots' owners and reconnecting in %.2f s",
                            self.failure, wait)
                gevent.sleep(wait)
                delay = min(delay * 2, BACKOFF_CAP)
                # A master that died has a replica in its place by now, or soon: its channels
                # go to the shard of whichever master owns their slots.
                broker._relocate(list(self.channels), self)
            if not self.channels and not self.ready:
                break
        self.retired = True
        self._drop()
        broker._shard_ended(self)

    def _connect(self) -> Tuple[List[Any], List[str]]:
        """Connect and subscribe this shard's channels; returns the messages that came before
        every answer (they wait for the gap fill) and the channels confirmed."""
        settings = {**self.broker._node_settings(self.address),
                    "socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": None,
                    "socket_keepalive": True, "protocol": 2,
                    "client_name": f"{PUBSUB_NAME}-{os.getpid()}"}
        connection_class = settings.pop("connection_class", redis.Connection)
        connection = connection_class(**settings)
        connection.connect()
        self.connection = connection
        self.received = received_check(connection)
        self._leaving.clear()
        channels = list(self.channels)
        names = {self._names(c)[1]: c for c in channels}
        self._send(channels)
        pending = set(names)
        early: List[Any] = []
        confirmed: List[str] = []
        while pending:
            try:
                reply = connection.read_response()
            except MovedError as error:
                moved = [c for c in channels if self.broker._slot_of(c) == error.slot_id]
                pending.difference_update(self._names(c)[1] for c in moved)
                self.broker._moved(moved, (error.host, int(error.port)))
                continue
            kind = reply[0]
            if kind in (b"message", b"smessage"):
                early.append(reply)
            elif kind == b"ssubscribe" and reply[1] in pending:
                pending.discard(reply[1])
                confirmed.append(names[reply[1]])
                self._confirmed(names[reply[1]], fill=False)
            else:
                self._handle(reply)
        return early, confirmed

    def _read_forever(self) -> None:
        connection = self.connection
        while True:
            try:
                reply = connection.read_response()
            except MovedError as error:
                self._on_moved(error)
                continue
            self.handling = True
            try:
                self._handle(reply)
            finally:
                self.handling = False

    def _handle(self, reply) -> None:
        kind = reply[0]
        if kind == b"smessage" or kind == b"message":
            self.broker._on_payload(reply[1], reply[2])
        elif kind == b"ssubscribe":
            self._confirmed(self.broker._channel_of(reply[1]), fill=True)
        elif kind == b"sunsubscribe":
            self._on_sunsubscribe(reply[1])

    def _confirmed(self, channel: str, fill: bool) -> None:
        broker = self.broker
        if channel not in self.channels:
            return  # left meanwhile
        self._bounces.pop(channel, None)
        confirmation = broker._confirmations.get(channel)
        if confirmation is not None:
            confirmation.set()
        elif fill and channel in broker._channels:
            # Moved here from another shard, or subscribed again after its slot moved back:
            # what was published meanwhile is in history, and nothing later has been read yet.
            broker._fill_gaps([channel])

    def _on_sunsubscribe(self, name: bytes) -> None:
        leaving = self._leaving.get(name)
        if leaving:
            if leaving == 1:
                del self._leaving[name]
            else:
                self._leaving[name] = leaving - 1
            return
        channel = self.broker._channel_of(name)
        if channel in self.channels and self.broker._wanted(channel):
            # Not asked for: the channel's slot left this master (resharding, a failover).
            log.info("channel %r's slot left Redis Cluster master %s; following it", channel,
                     self.name)
            gevent.spawn(self._follow, channel)

    def _follow(self, channel: str) -> None:
        self.broker._relocate([channel], self)
        if self.broker._owner.get(channel) is self and channel in self.channels:
            # The slot map still says here: ask this node again, which answers MOVED if wrong.
            self.bounce(channel)
            self.take(channel)

    def _on_moved(self, error: MovedError) -> None:
        moved = [c for c in self.channels if self.broker._slot_of(c) == error.slot_id]
        self.broker._moved(moved, (error.host, int(error.port)))

    def _drop(self) -> None:
        self.received = nothing_received
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except (RedisError, OSError):
                pass

