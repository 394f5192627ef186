"""Where events come from: the embedded in-process broker or Redis, behind one interface."""

from typing import Optional

from .base import (
    Broker,
    BrokerRefused,
    BrokerUnavailable,
    History,
    MessageSink,
    PublishResult,
    ResyncSink,
)
from .endpoints import RedisEndpoint

__all__ = ["Broker", "BrokerRefused", "BrokerUnavailable", "History", "MessageSink",
           "PublishResult", "RedisEndpoint", "ResyncSink", "create_broker"]


def create_broker(redis: Optional[RedisEndpoint], prefix: str, history_length: int,
                  history_age: float, max_message_size: Optional[int] = None) -> Broker:
    """The Redis broker when Redis is given (a URL, or Sentinel; the cluster broker for a
    Redis Cluster), else the embedded one. `max_message_size` bounds raw messages from Redis."""
    if redis is not None and redis.cluster:
        from .cluster import ClusterBroker

        return ClusterBroker(redis.url, prefix, history_length, history_age, max_message_size)
    if redis is not None:
        from .redis import RedisBroker

        return RedisBroker(redis, prefix, history_length, history_age, max_message_size)
    from .embedded import EmbeddedBroker

    return EmbeddedBroker(history_length, history_age)
