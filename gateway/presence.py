"""Presence: how many subscribers a channel has on every gateway process sharing one Redis.

Every `interval` seconds (`beat`) each process writes its own subscriber count per channel to
Redis, in one transaction: a hash `<prefix>sse-gateway:presence:<process id>` (channel ->
count) that expires three intervals after the write, and its id in the set
`<prefix>sse-gateway:presence`. Counts are summed over the processes whose hash still exists,
with the answering process's own share read from its hub, live. A process that dies stops
writing, and its hash expires by Redis' own clock (no two hosts' clocks are compared): its
share drops out of every answer at most three intervals after its last write. One that stops
cleanly removes its hash at once. Ids whose hash has expired are removed from the set by
whoever reads it.

On a Redis Cluster the same keys carry a hash tag, `<prefix>{sse-gateway:presence}` and
`<prefix>{sse-gateway:presence}:<process id>`, so that they are all in one slot: a beat stays
one transaction, and a reader finds every process's share on one master, in one round trip.
That master does all of the fleet's presence work, which is one small transaction per process
and interval, and what `GET /channels` reads.

With the embedded broker the gateway is one process, and its hub answers alone.
"""

import logging
import os
import secrets
import socket
from typing import Any, Dict, List, NamedTuple, Optional

from redis.exceptions import RedisError

from .brokers import BrokerUnavailable, RedisEndpoint
from .hub import Hub

log = logging.getLogger(__name__)

KEY = "sse-gateway:presence"
CLUSTER_KEY = "{sse-gateway:presence}"  # one hash slot for them all
# A field in every process's hash, so that a process with no subscribers is still seen alive.
# No channel name contains "/".
ALIVE = "/"
EXPIRY_INTERVALS = 3  # a process's share lives this many intervals after its last write
_TIMEOUT = 2.0


class ChannelPresence(NamedTuple):
    channel: str
    subscribers: int
    processes: int  # gateway processes holding at least one of them


def process_id() -> str:
    """This process's name in presence: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LocalPresence:
    """Presence from this process's hub alone: the embedded broker's one process."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.id = process_id()

    def channel(self, name: str) -> ChannelPresence:
        count = self._hub.channel_counts().get(name, 0)
        return ChannelPresence(name, count, int(count > 0))

    def busiest(self, limit: int) -> List[ChannelPresence]:
        return _ranked({c: [n] for c, n in self._hub.channel_counts().items()}, limit)

    def processes(self) -> int:
        return 1

    def beat(self) -> None:
        """Nothing to share."""

    def stop(self) -> None:
        """Nothing shared."""


class RedisPresence(LocalPresence):
    """Presence summed over every gateway process on the same Redis (or Redis Cluster) and
    prefix."""

    def __init__(self, hub: Hub, endpoint: RedisEndpoint, prefix: str, interval: float) -> None:
        super().__init__(hub)
        self._endpoint = endpoint
        self._redis: Optional[Any] = None
        self._set = prefix + (CLUSTER_KEY if endpoint.cluster else KEY)
        self._prefix = self._set + ":"
        self._own = self._prefix + self.id
        self._ttl_ms = int(interval * EXPIRY_INTERVALS * 1000)
        self._written: Optional[Dict[str, int]] = None  # what the last beat wrote
        self._failing = False

    @property
    def _client(self) -> Any:
        """The client, made on first use: a cluster's connects (and raises RedisError when no
        node answers), which must not keep the gateway from starting."""
        if self._redis is None:
            self._redis = self._endpoint.client(socket_timeout=_TIMEOUT,
                                                socket_connect_timeout=_TIMEOUT, max_connections=4)
        return self._redis

    def beat(self) -> None:
        """Write this process's share, and keep it alive for three more intervals."""
        counts = self._hub.channel_counts()
        try:
            with self._client.pipeline(transaction=True) as pipe:
                if counts != self._written:
                    pipe.delete(self._own)
                    pipe.hset(self._own, mapping={ALIVE: 1, **counts})
                pipe.pexpire(self._own, self._ttl_ms)
                pipe.sadd(self._set, self.id)
                pipe.execute()
        except RedisError as error:
            self._written = None  # write it all again next time
            if not self._failing:
                log.warning("could not write presence to Redis (%s); GET /channels counts this "
                            "process again once it can", error)
            self._failing = True
            return
        if self._failing:
            log.info("presence written to Redis again")
        self._failing = False
        self._written = counts

    def stop(self) -> None:
        if self._redis is None:
            return  # never written
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._own)
                pipe.srem(self._set, self.id)
                pipe.execute()
        except RedisError:
            pass  # it expires on its own
        self._redis.close()

    def channel(self, name: str) -> ChannelPresence:
        shares = [count for others in self._others(name) for count in others.values()]
        own = self._hub.channel_counts().get(name, 0)
        counts = [n for n in shares + [own] if n > 0]
        return ChannelPresence(name, sum(counts), len(counts))

    def busiest(self, limit: int) -> List[ChannelPresence]:
        counts: Dict[str, List[int]] = {}
        for share in self._others(None) + [self._hub.channel_counts()]:
            for channel, count in share.items():
                counts.setdefault(channel, []).append(count)
        return _ranked(counts, limit)

    def processes(self) -> int:
        """Gateway processes sharing their presence now, this one included."""
        try:
            members = self._client.smembers(self._set)
            with self._client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.exists(self._prefix + member.decode("utf-8", "replace"))
                alive = pipe.execute()
        except RedisError as error:
            raise BrokerUnavailable(f"could not read presence from Redis: {error}") from None
        own = self.id.encode()
        return 1 + sum(1 for member, up in zip(members, alive) if up and member != own)

    def _others(self, channel: Optional[str]) -> List[Dict[str, int]]:
        """The other processes' shares: of one channel, or of all channels."""
        try:
            members = [m.decode("utf-8", "replace") for m in self._client.smembers(self._set)]
            members = [m for m in members if m != self.id]
            with self._client.pipeline(transaction=False) as pipe:
                for member in members:
                    key = self._prefix + member
                    pipe.exists(key)
                    if channel is None:
                        pipe.hgetall(key)
                    else:
                        pipe.hget(key, channel)
                replies = pipe.execute()
            shares, gone = [], []
            for index, member in enumerate(members):
                alive, share = replies[2 * index], replies[2 * index + 1]
                if not alive:
                    gone.append(member)
                elif channel is None:
                    shares.append({k.decode("utf-8", "replace"): int(v) for k, v in share.items()
                                   if k != ALIVE.encode()})
                elif share is not None:
                    shares.append({channel: int(share)})
            if gone:
                self._client.srem(self._set, *gone)
        except (RedisError, ValueError) as error:
            raise BrokerUnavailable(f"could not read presence from Redis: {error}") from None
        return shares


def _ranked(counts: Dict[str, List[int]], limit: int) -> List[ChannelPresence]:
    ranked = [ChannelPresence(channel, sum(shares), sum(1 for n in shares if n > 0))
              for channel, shares in counts.items()]
    ranked.sort(key=lambda p: (-p.subscribers, p.channel))
    return [p for p in ranked if p.subscribers > 0][:limit]


def create_presence(hub: Hub, redis: Optional[RedisEndpoint], prefix: str,
                    interval: float) -> LocalPresence:
    if redis is not None:
        return RedisPresence(hub, redis, prefix, interval)
    return LocalPresence(hub)
