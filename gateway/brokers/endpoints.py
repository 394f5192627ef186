"""Where Redis connections go: the server a URL names, or the master Redis Sentinel names now.

Every part of the gateway that talks to Redis (the broker's command, publish and pub/sub
connections, presence, the status page) and the Python `Publisher` get their connections
from a `RedisEndpoint`, so none of them knows which of the two it is.

Under Sentinel, each connection asks the sentinels for the master's address whenever it
connects (redis-py's `SentinelManagedConnection`): after a failover, a connection that breaks
comes back on the new master, and one still open to a demoted master is dropped at its first
write (`READONLY`) and comes back likewise. The URL then gives only what the master's
connections need besides an address: credentials, database, TLS (`redis://:PASSWORD@/0`).

`refusal` tells whether these settings are ones Redis (or a sentinel) will never accept (a
wrong password, none given where one is asked for, an ACL user without the commands the
gateway needs): the gateway then exits at startup rather than retry for ever.

No gevent here, and redis-py is imported only when a pool is made or a refusal looked for.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

Address = Tuple[str, int]

# Seconds to connect to a sentinel and for it to answer; each is asked once per connect, the
# next one on failure, so a dead one among several costs at most this.
SENTINEL_TIMEOUT = 2.0


def refused(error: BaseException) -> bool:
    """Whether `error` is Redis refusing the credentials or the ACL user given: NOAUTH,
    WRONGPASS, NOPERM and the like, which no retry mends."""
    from redis.exceptions import (
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        NoPermissionError,
    )

    if isinstance(error, (AuthenticationError, AuthenticationWrongNumberOfArgsError,
                          NoPermissionError)):
        return True
    return str(error).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))


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
    """A Redis URL alone, or with `sentinels` and `master`: Sentinel's master of that name;
    or, `cluster`, the comma-separated seed nodes of a Redis Cluster."""

    url: str = "redis://"
    sentinels: Tuple[Address, ...] = ()
    master: Optional[str] = None
    sentinel_password: Optional[str] = field(default=None, repr=False)
    cluster: bool = False  # the URL names seed nodes of a Redis Cluster, comma-separated

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> List[str]:
        """What is wrong with these settings, in the words of the gateway's options."""
        if self.cluster and self.sentinels:
            return ["--redis-cluster and --redis-sentinel do not go together: a cluster "
                    "fails over by itself"]
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
        for url in self.url.split(",") if self.cluster else [self.url]:
            password = urlsplit(url.strip()).password
            if password:
                found += [password, unquote(password)]
        return found

    def describe(self) -> str:
        """For logs and errors: where it connects, without passwords."""
        if self.cluster:
            seeds = [RedisEndpoint(url.strip()).describe() for url in self.url.split(",")]
            return f"the Redis Cluster of {','.join(seeds)}"
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

        if self.cluster:
            # Without retries, as under Sentinel; MOVED and ASK are followed all the same.
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisClusterException
            from redis.retry import Retry

            from ..cluster_nodes import cluster_client

            try:
                return cluster_client(self.url, retry=Retry(NoBackoff(), 0), **options)
            except RedisClusterException as error:  # no seed node answered
                raise redis.ConnectionError(str(error)) from None
        if not self.sentinels:
            return redis.Redis.from_url(self.url, **options)
        return redis.Redis(connection_pool=self.pool(**options))

    def refusal(self, timeout: float, probe: Optional[Callable[[Any], None]] = None
                ) -> Optional[str]:
        """Why Redis refuses these settings, in words that say what to fix; None when it takes
        them or cannot be asked now (unreachable: that one may mend). `probe(client)` runs the
        commands the caller needs on a client of the master, and raises what Redis answers.
        Never the passwords. Not for a cluster (cluster_nodes.credentials_refused is)."""
        import redis
        from redis.connection import parse_url

        settings = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        if self.sentinels:
            address = None
            for host, port in self.sentinels:
                sentinel = redis.Redis(host=host, port=port, password=self.sentinel_password,
                                       **settings)
                try:
                    address = sentinel.sentinel_get_master_addr_by_name(self.master)
                except redis.RedisError as error:
                    if refused(error):
                        given = ("the password of --redis-sentinel-password is wrong"
                                 if self.sentinel_password else
                                 "it asks for a password: give --redis-sentinel-password")
                        return (f"the sentinel {format_addresses(((host, port),))} refused "
                                f"the gateway ({error}): {given}")
                    continue
                finally:
                    sentinel.close()
                if address:
                    break
            if not address:
                return None
            host = address[0].decode() if isinstance(address[0], bytes) else address[0]
            where = f"the master {self.master!r} at {format_addresses(((host, address[1]),))}"
            master = parse_url(self.url)
            if master.pop("connection_class", None) is redis.SSLConnection:
                master["ssl"] = True
            client = redis.Redis(host=host, port=int(address[1]), **settings, **master)
        else:
            where = f"Redis at {self.describe()}"
            client = redis.Redis.from_url(self.url, **settings)
        try:
            client.ping()
            if probe is not None:
                probe(client)
        except redis.RedisError as error:
            if not refused(error):
                return None
            if isinstance(error, redis.exceptions.NoPermissionError) or \
                    str(error).startswith("NOPERM"):
                fix = ("give the ACL user of --redis-url the commands, keys and channels the "
                       "gateway needs")
            elif client.get_connection_kwargs().get("password"):
                fix = "the password (or ACL user) of --redis-url is wrong"
            else:
                return (f"{where} refused the credentials of --redis-url (it asks for a "
                        f"password, and none is given): give it as redis://:PASSWORD@host:port")
            return f"{where} refused the credentials of --redis-url ({error}): {fix}"
        finally:
            client.close()
        return None
