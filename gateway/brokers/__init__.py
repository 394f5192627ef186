"""Where events come from: the embedded in-process broker or Redis, behind one interface."""

from .base import Broker, BrokerUnavailable, History, MessageSink, PublishResult, ResyncSink

__all__ = ["Broker", "BrokerUnavailable", "History", "MessageSink", "PublishResult", "ResyncSink",
           "create_broker"]


def create_broker(redis_url, prefix: str, history_length: int, history_age: float,
                  cluster: bool = False) -> Broker:
    """The Redis broker when a URL is given (the cluster one for a Redis Cluster), else the
    embedded one."""
    if redis_url and cluster:
        from .cluster import ClusterBroker

        return ClusterBroker(redis_url, prefix, history_length, history_age)
    if redis_url:
        from .redis import RedisBroker

        return RedisBroker(redis_url, prefix, history_length, history_age)
    from .embedded import EmbeddedBroker

    return EmbeddedBroker(history_length, history_age)
