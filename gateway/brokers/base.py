"""The broker interface: publish with an id, subscribe a channel, read its history."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..ids import EventId, HistoryBounds
from ..message import Message

MessageSink = Callable[[Message], None]
# Told that a channel's history may hold, up to the id given, entries that were not delivered
# live (read from history after a reconnect, or unreadable); ZERO: it has no history, None:
# what it holds is unknown (lost).
ResyncSink = Callable[[str, Optional[EventId]], None]


class BrokerUnavailable(Exception):
    """The broker cannot be reached now; the text says what failed."""


class BrokerRefused(BrokerUnavailable):
    """The broker refuses the gateway's settings (its credentials): retrying will not help."""


@dataclass(frozen=True)
class PublishResult:
    event_id: EventId
    receivers: int  # gateway processes that had the channel subscribed


@dataclass(frozen=True)
class History:
    messages: List[Message]  # after the requested id, oldest first
    gap: bool  # events after the requested id were lost (trimmed, expired, or never known)
    bounds: Optional[HistoryBounds] = None  # what history holds now, where the broker says


class Broker(ABC):
    """One per gateway process. Delivers every message of a subscribed channel to the sink once,
    in id order, including after its own reconnects."""

    name: str
    # Counted for /healthz and /metrics: messages from the broker refused (invalid, or failed
    # to deliver), history entries skipped as invalid, restarts of a listener that ended, and
    # connections to the broker established again after one was lost.
    refused = 0
    skipped = 0
    listener_restarts = 0
    reconnects = 0
    # Whether `history` answers from memory, without waiting (so also from the event loop).
    history_in_memory = False

    @property
    def connected(self) -> bool:
        """Whether the broker's connection is up now (as last seen: no round trip)."""
        return True

    @abstractmethod
    def start(self, sink: MessageSink, resync: Optional[ResyncSink] = None) -> None:
        """Begin delivering messages of subscribed channels to `sink`, and telling `resync`
        (in order with them) where history holds what they did not carry."""

    @abstractmethod
    def stop(self) -> None: ...

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until subscribers can be served; whether they can.
        Raises BrokerRefused when the broker will never serve them with these settings."""
        return True

    def own_on_the_way(self, channels: Iterable[str]) -> Dict[str, EventId]:
        """Each of `channels` (subscribed) with an event whose publish this process
        acknowledged and that has not been passed to the sink yet: the id of its last such
        event. Answered without waiting."""
        return {}

    def more_received(self) -> bool:
        """Whether more messages were received already, to be passed to the sink right after
        the one it is being passed now (the hub then fans them out together); answered
        without waiting or reading."""
        return False

    @abstractmethod
    def publish(self, message: Message) -> PublishResult:
        """Append to history and deliver, atomically; raises BrokerUnavailable."""

    def publish_later(self, message: Message) -> Callable[[], PublishResult]:
        """Start publishing `message`; calling what is returned waits for the result, and
        returns or raises as `publish` does. Publishes started one after another are published
        in that order, and each is published even if nobody waits. This one publishes now."""
        try:
            result = self.publish(message)
        except Exception as error:
            failure = error

            def fail() -> PublishResult:
                raise failure

            return fail
        return lambda: result

    @abstractmethod
    def publish_many(self, messages: Sequence[Message]) -> List[PublishResult]:
        """Append every message to history and deliver it, in order and all in one atomic step
        (each channel's events keep their order); a result per message. Raises
        BrokerUnavailable as `publish` does: the whole batch or none of it is published."""

    @abstractmethod
    def subscribe(self, channel: str) -> EventId:
        """Return once the subscription is live: the id of the channel's last event (ZERO if none)."""

    @abstractmethod
    def unsubscribe(self, channel: str) -> None: ...

    @abstractmethod
    def history(self, positions: Dict[str, EventId],
                limit: Optional[int] = None) -> Dict[str, History]:
        """Each channel's events after its position, all read at one instant: at most `limit`
        per channel (the first ones: the caller continues from the last), else all of them.

        The messages may be shared with other callers: treat them as immutable.
        """

    @abstractmethod
    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker answers now."""
