"""A Redis Cluster's seed nodes, as --redis-url names them (comma-separated URLs), and a
redis-py RedisCluster client on them; no gevent here, so publishers use it too."""

from typing import Any, Dict, List

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url


def seeds(urls: str) -> List[str]:
    """The seed node URLs of a comma-separated --redis-url."""
    return [url.strip() for url in urls.split(",") if url.strip()]


def connection_settings(urls: str) -> Dict[str, Any]:
    """What every node is connected with (password, TLS...), from the first seed URL."""
    settings = dict(parse_url(seeds(urls)[0]))
    for name in ("host", "port", "db", "path"):
        settings.pop(name, None)
    return settings


def cluster_client(urls: str, **options: Any) -> RedisCluster:
    """A RedisCluster client on the seed nodes of `urls`; raises RedisError or
    RedisClusterException when none answers."""
    settings = connection_settings(urls)
    connection_class = settings.pop("connection_class", redis.Connection)
    if connection_class is not redis.Connection:
        settings["ssl"] = True  # rediss://
    nodes = [ClusterNode(parsed.get("host", "127.0.0.1"), int(parsed.get("port", 6379)))
             for parsed in map(parse_url, seeds(urls))]
    return RedisCluster(startup_nodes=nodes, **settings, **options)
