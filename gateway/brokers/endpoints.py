"""Where Redis connections go: the server a URL names, or the master Redis Sentinel names now.

Every part of the gateway that talks to Redis (the broker's command, publish and pub/sub
connections, presence, the status page) and the Python `Publisher` get their connections
from a `RedisEndpoint`, so none of them knows which of the two it is.

Under Sentinel, each connection asks the sentinels for the master's address whenever it
connects (redis-py's `SentinelManagedConnection`): after a failover, a connection that breaks
comes back on the new master, and one still open to a demoted master is dropped at its first
write (`READONLY`) and comes back likewise. The URL then gives only what the master's
connections need besides an address: credentials, database, TLS (`redis://:PASSWORD@/0`).

No gevent here, and redis-py is imported only when a pool is made.
"""

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

Address = Tuple[str, int]

# Seconds to connect to a sentinel and for it to answer; each is asked once per connect, the
# next one on failure, so a dead one among several costs at most this.
SENTINEL_TIMEOUT = 2.0


def parse_addresses(text: str) -> Tuple[Address, ...]:
    """`host:port[,host:port...]` (IPv6 in brackets, `[::1]:26379`) as pairs; ValueError
    naming the bad one."""
    addresses = []
    for part in (p.strip() for p in text.split(",")):
        host, colon, port = part.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not HOST:PORT")
        addresses.append((host, int(port)))
    return tuple(addresses)


def format_addresses(addresses: Tuple[Address, ...]) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


@dataclass(frozen=True)
class RedisEndpoint:
    """A Redis URL alone, or with `sentinels` and `master`: Sentinel's master of that name."""

    url: str = "redis://"
    sentinels: Tuple[Address, ...] = ()
    master: Optional[str] = None
    sentinel_password: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> List[str]:
        """What is wrong with these settings, in the words of the gateway's options."""
        if not self.sentinels:
            if self.master is not None or self.sentinel_password is not None:
                return ["--redis-sentinel-master and --redis-sentinel-password need "
                        "--redis-sentinel"]
            return []
        problems = []
        if not self.master:
            problems.append("--redis-sentinel needs --redis-sentinel-master, the name the "
                            "sentinels monitor the master under")
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss"):
            problems.append("with --redis-sentinel, --redis-url must be redis:// or rediss://")
        elif parts.hostname or parts.port:
            problems.append("with --redis-sentinel, --redis-url gives the master's password, "
                            "database and TLS only (redis://:PASSWORD@/0): its address comes "
                            "from the sentinels")
        return problems

    @property
    def secrets(self) -> List[str]:
        """The passwords, as written and decoded: never to be logged."""
        found = [self.sentinel_password] if self.sentinel_password else []
        password = urlsplit(self.url).password
        if password:
            found += [password, unquote(password)]
        return found

    def describe(self) -> str:
        """For logs and errors: where it connects, without passwords."""
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.split("@", 1)[1]
        url = scheme + sep + rest
        if not self.sentinels:
            return url
        return (f"the master {self.master!r} of the sentinels "
                f"{format_addresses(self.sentinels)} ({url})")

    def pool(self, **options: Any):
        """A redis-py connection pool; `options` are ConnectionPool's, the URL's query wins."""
        import redis

        if not self.sentinels:
            return redis.ConnectionPool.from_url(self.url, **options)
        from redis.backoff import NoBackoff
        from redis.connection import SSLConnection, parse_url
        from redis.retry import Retry
        from redis.sentinel import Sentinel, SentinelConnectionPool

        settings = {**options, **parse_url(self.url)}
        if settings.pop("connection_class", None) is SSLConnection:
            settings["ssl"] = True
        # Asked once each: on failure the next sentinel is, rather than the same one again.
        manager = Sentinel(self.sentinels, sentinel_kwargs={
            "socket_connect_timeout": SENTINEL_TIMEOUT, "socket_timeout": SENTINEL_TIMEOUT,
            "password": self.sentinel_password, "retry": Retry(NoBackoff(), 0),
        })
        return SentinelConnectionPool(self.master, manager, **settings)

    def client(self, **options: Any):
        """A redis-py client on a pool of its own: for a URL, with redis-py's default retries;
        under Sentinel, with none (a command retried after its reply was lost to a failover
        could run twice, once on each master)."""
        import redis

        if not self.sentinels:
            return redis.Redis.from_url(self.url, **options)
        return redis.Redis(connection_pool=self.pool(**options))
