"""A Redis Cluster's seed nodes, as --redis-url names them (comma-separated URLs), and a
redis-py RedisCluster client on them; no gevent here, so publishers use it too.

Every node is connected with the settings of the first URL (its password, TLS...): the nodes of
a cluster share their `requirepass`, and the nodes a seed names carry no settings of their own.
"""

from typing import Any, Callable, Dict, List, Optional

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry


def seeds(urls: str) -> List[str]:
    """The seed node URLs of a comma-separated --redis-url."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def connection_settings(urls: str) -> Dict[str, Any]:
    """What every node is connected with (password, TLS...), from the first seed URL."""
    settings = dict(parse_url(seeds(urls)[0]))
    for name in ("host", "port", "db", "path"):
        settings.pop(name, None)
    return settings


def _client_settings(urls: str) -> Dict[str, Any]:
    """connection_settings as a client takes them."""
    settings = connection_settings(urls)
    connection_class = settings.pop("connection_class", redis.Connection)
    if connection_class is not redis.Connection:
        settings["ssl"] = True  # rediss://
    return settings


def _addresses(urls: str) -> List[ClusterNode]:
    return [ClusterNode(parsed.get("host", "127.0.0.1"), int(parsed.get("port", 6379)))
            for parsed in map(parse_url, seeds(urls))]


def cluster_client(urls: str, **options: Any) -> RedisCluster:
    """A RedisCluster client on the seed nodes of `urls`; raises RedisError or
    RedisClusterException when none answers."""
    return RedisCluster(startup_nodes=_addresses(urls), **_client_settings(urls), **options)


def credentials_refused(urls: str, timeout: float) -> Optional[str]:
    """Why the first seed node that answers refuses the credentials of `urls` (a wrong
    password, or none given to a node that asks for one), None if it takes them or none
    answers. RedisCluster reports either as a node it could not reach: ask one directly."""
    def ask(client: redis.Redis, node: ClusterNode) -> Optional[str]:
        try:
            client.ping()
        except redis.AuthenticationError as error:
            if client.get_connection_kwargs().get("password") is None:
                return "the nodes ask for a password (requirepass), and none is given"
            return f"the node {node.name} refused them: {error}"
        return None
    return _ask_a_seed(urls, timeout, ask)


def permissions_refused(urls: str, timeout: float, probe: Callable[[redis.Redis], None]
                        ) -> Optional[str]:
    """Why the first seed node that answers refuses a command `probe(client)` runs (an ACL
    user without a command, key or channel the caller needs: NOPERM), None if it runs them or
    none answers. `probe` raises a ResponseError only for a refusal. Redis checks permissions
    before it redirects, so any node tells, whichever slot the keys are in."""
    def ask(client: redis.Redis, node: ClusterNode) -> Optional[str]:
        client.ping()
        try:
            probe(client)
        except redis.exceptions.ResponseError as error:
            return f"the node {node.name} refused a command: {error}"
        return None
    return _ask_a_seed(urls, timeout, ask)


def _ask_a_seed(urls: str, timeout: float,
                ask: Callable[[redis.Redis, ClusterNode], Optional[str]]) -> Optional[str]:
    """What `ask` finds on the first seed node that answers it (None if none does)."""
    settings = _client_settings(urls)
    for node in _addresses(urls):
        # No retries: a refused password is a connection error to redis-py, retried with
        # backoff by default.
        client = redis.Redis(host=node.host, port=node.port, socket_timeout=timeout,
                             socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
                             **settings)
        try:
            return ask(client, node)
        except redis.RedisError:
            continue
        finally:
            client.close()
    return None
