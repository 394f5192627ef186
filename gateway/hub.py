"""Per-process fan-out: channel -> local subscribers. The only place that knows both sides.

The broker hands each message to `Hub.dispatch` once, and the hub hands it to every local
subscriber of its channel (`Subscriber.deliver`): an event stream writes it to its socket there
and then, a long-poll queues it and wakes its request; messages the broker received together
are fanned out together, a channel's run of them in one write to each caught-up stream. A
subscriber that has fallen too far behind is dropped and counted, so one slow client never
costs memory without bound nor slows the others; and the bytes all subscribers hold for
their clients share one budget, so many slow clients together cannot either.

A subscriber reaches back into the hub only through the `Seat` the hub gives it as it attaches.

Each channel keeps its latest events (`recent.Recent`), which answer history reads from memory
when they cover them. A channel whose last local subscriber left stays subscribed for a grace
period (long-polls are between requests most of the time), and keeps filling its recent events.
"""

import logging
import time
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Set

import gevent

from .brokers import Broker, History
from .ids import ZERO, EventId
from .message import HistoryLost, Message, Run
from .recent import Recent, RecentLimits
from .wakeups import Latch, Wakeups

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the hub asks of a local subscriber (the transports implement it)."""

    channels: Sequence[str]
    # True while every live event is new to it and it takes each event's shared bytes as they
    # are (an `EventStream` caught up): then `deliver` may be handed a `message.Run` of
    # several events at once.
    fast: bool

    def attached(self, seat: "Seat") -> None:
        """Take the seat the hub gives, before the first `deliver`."""

    def deliver(self, message: Message) -> bool:
        """Take a message; False when too far behind, and the hub drops the subscriber."""

    def close(self) -> None:
        """Stop at once: let go of what it holds (`seat.hold(0)`) and leave (`seat.leave()`)."""

    def end(self) -> None:
        """End cleanly, the server stopping: as `close`, once the client has what it is owed."""


class Seat:
    """A subscriber's place at the hub: its one way back in, given as the hub attaches it.

    Through it the subscriber reports the bytes it holds for its client (`hold`), reads how
    far its channels have been dispatched (`tail`), asks to be dropped (`drop_slow`) and
    leaves (`leave`). A subscriber that has left may still hold bytes (an ending stream whose
    socket has not taken its last ones), and still reports them here until it lets them go.
    """

    __slots__ = ("subscriber", "held", "_hub")

    def __init__(self, hub: "Hub", subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.held = 0  # as the budget counts it
        self._hub = hub

    @property
    def wakeups(self) -> Wakeups:
        """The process' wake-ups, for a subscriber that wakes a waiting greenlet."""
        return self._hub.wakeups

    def hold(self, held: int) -> None:
        """The bytes held now; over the budget, the largest holders (maybe this one) are dropped."""
        if held != self.held:
            self._hub.budget.update(self, held)

    def tail(self, channel: str) -> EventId:
        """The id of the last event dispatched on one of the subscriber's channels (or the
        channel's last when the subscriber was attached)."""
        return self._hub._channels[channel].tail

    def drop_slow(self, why: str) -> None:
        """Drop the subscriber as one that cannot keep up, counted and logged with `why`."""
        self._hub._drop_slow(self.subscriber, why)

    def leave(self) -> None:
        self._hub._detach(self.subscriber)


class _Channel:
    """A channel's local subscribers, its subscription (pending until the broker confirms),
    the id of the last event dispatched on it, its recent events (from when it is subscribed)
    and, while it has no subscriber, the timer that unsubscribes it."""

    __slots__ = ("subscribers", "ready", "tail", "recent", "grace")

    def __init__(self, wakeups: Wakeups) -> None:
        self.subscribers: Set[Subscriber] = set()
        self.ready = Latch(wakeups)
        self.tail: EventId = ZERO
        self.recent: Optional[Recent] = None
        self.grace = None  # a gevent loop timer


class Budget:
    """The bytes held for slow clients across the process, against one limit.

    Subscribers report what they hold only when it changes: when a socket cannot take an
    event, when it drains, when a long-poll queues or takes. Only the seats holding bytes are
    tracked, so finding the largest costs nothing while every socket keeps up. Over the limit,
    the largest holders are dropped until the total is back under it.
    """

    __slots__ = ("limit", "total", "_holders", "_drop", "_trimming")

    def __init__(self, limit: int, drop: Callable[[Seat], None]) -> None:
        self.limit = limit
        self.total = 0
        self._holders: Set[Seat] = set()
        self._drop = drop  # must leave the seat holding nothing
        self._trimming = False

    def update(self, seat: Seat, held: int) -> None:
        before = seat.held
        seat.held = held
        self.total += held - before
        if not held:
            self._holders.discard(seat)
            return
        if not before:
            self._holders.add(seat)
        if held > before and self.total > self.limit and not self._trimming:
            self._trim()

    def _trim(self) -> None:
        self._trimming = True  # a drop may yield (the broker unsubscribes): one trim at a time
        over, dropped = self.total, 0
        try:
            for _ in range(len(self._holders)):
                if self.total <= self.limit:
                    break
                self._drop(max(self._holders, key=_held))
                dropped += 1
        finally:
            self._trimming = False
        log.info("%d bytes held for slow clients, over --max-buffered-bytes (%d): dropped %d "
                 "subscriber(s) holding the most, freeing %d bytes", over, self.limit, dropped,
                 over - self.total)


def _held(seat: Seat) -> int:
    return seat.held


def _join(entry: "_Channel", subscriber: Subscriber) -> None:
    if entry.grace is not None:  # back within the grace period: keep the subscription
        entry.grace.close()
        entry.grace = None
    entry.subscribers.add(subscriber)


class Hub:
    def __init__(self, broker: Broker, max_buffered_bytes: int,
                 recent: Optional[RecentLimits] = None, unsubscribe_grace: float = 0.0,
                 wakeups: Optional[Wakeups] = None) -> None:
        """`recent`: how many recent events each channel keeps in memory (None: none, for a
        broker whose history is in memory already); `unsubscribe_grace`: seconds a channel
        stays subscribed after its last local subscriber left (0: unsubscribe at once);
        `wakeups`: the process' (the hub makes its own if none is given)."""
        self._broker = broker
        self.wakeups = wakeups if wakeups is not None else Wakeups()
        self._channels: Dict[str, _Channel] = {}
        self._recent = recent if recent is not None and recent.events and recent.max_bytes \
            else None
        self._grace = unsubscribe_grace
        self._closing = False
        self.budget = Budget(max_buffered_bytes, self._drop_for_memory)
        self.dropped_slow = 0  # stalled ones included
        self.dropped_stalled = 0
        self.dropped_memory = 0
        self.resets: Dict[str, int] = {}  # gateway-reset events sent at subscribe, by reason
        self.deliveries = 0  # messages dispatched, once per local subscriber of their channel
        self.lost_deliveries = 0  # of them, HistoryLost: gateway-reset events (history-lost)
        self.history_from_memory = 0  # history requests answered from recent events
        self.history_from_broker = 0
        # While `dispatch` walks a channel's subscribers, those that leave wait here.
        self._dispatching = False
        self._leaving: List[Subscriber] = []
        # Messages received together, held until the last of them (see dispatch).
        self._held: List[Message] = []
        self._release_due = False
        self._releasing = False

    @property
    def subscriber_count(self) -> int:
        """Subscribers whose subscriptions are live (not still being set up)."""
        return len(self.subscribers())

    def subscribers(self) -> Set[Subscriber]:
        """Every subscriber whose subscriptions are live, once each."""
        return {s for entry in self._channels.values() if entry.ready.successful()
                for s in entry.subscribers}

    def channel_counts(self) -> Dict[str, int]:
        """Each subscribed channel's number of local subscribers."""
        return {channel: len(entry.subscribers) for channel, entry in self._channels.items()
                if entry.ready.successful()}

    def local_subscribers(self, channel: str) -> int:
        entry = self._channels.get(channel)
        return len(entry.subscribers) if entry is not None else 0

    def count_reset(self, reason: str) -> None:
        """A subscriber is sent a `gateway-reset` as it subscribes, for `reason`."""
        self.resets[reason] = self.resets.get(reason, 0) + 1

    @property
    def channel_count(self) -> int:
        """Channels with local subscribers."""
        return sum(1 for entry in self._channels.values() if entry.subscribers)

    @property
    def idle_channel_count(self) -> int:
        """Channels still subscribed with no local subscriber: in their grace period."""
        return len(self._channels) - self.channel_count

    @property
    def recent_bytes(self) -> int:
        """What the channels' recent events hold, counted by their encoded frames."""
        return sum(entry.recent.size for entry in self._channels.values()
                   if entry.recent is not None)

    @property
    def buffered_bytes(self) -> int:
        """What subscribers hold for their clients: not yet taken by a socket or a long-poll."""
        return self.budget.total

    def attach(self, subscriber: Subscriber) -> Dict[str, EventId]:
        """Subscribe on every channel; returns each channel's last event id at this moment.

        Every message published after that id reaches the subscriber. Raises BrokerUnavailable
        when the broker cannot subscribe, and closes the subscriber: nothing is left attached.
        """
        subscriber.attached(Seat(self, subscriber))
        positions: Dict[str, EventId] = {}
        try:
            for channel in subscriber.channels:
                positions[channel] = self._attach_one(subscriber, channel)
        except BaseException:
            subscriber.close()
            raise
        return positions

    def attach_now(self, subscriber: Subscriber) -> Optional[Dict[str, EventId]]:
        """As `attach`, for the event loop, which must not wait: None, with nothing attached,
        unless every channel is subscribed already."""
        if self._closing:
            return None
        channels = self._channels
        for channel in subscriber.channels:
            entry = channels.get(channel)
            if entry is None or not entry.ready.successful():
                return None
        subscriber.attached(Seat(self, subscriber))
        positions: Dict[str, EventId] = {}
        for channel in subscriber.channels:
            entry = channels[channel]
            _join(entry, subscriber)
            positions[channel] = entry.tail
        return positions

    def _attach_one(self, subscriber: Subscriber, channel: str) -> EventId:
        entry = self._channels.get(channel)
        if entry is not None:
            _join(entry, subscriber)
            entry.ready.get()
            return entry.tail
        entry = self._channels[channel] = _Channel(self.wakeups)
        entry.subscribers.add(subscriber)
        try:
            entry.tail = self._broker.subscribe(channel)
        except BaseException as error:
            entry.ready.set_exception(error)
            del self._channels[channel]
            raise
        if self._recent is not None:
            entry.recent = Recent(self._recent, entry.tail)
        entry.ready.set(True)
        if not entry.subscribers:  # all left while it was being subscribed
            self._idle(channel, entry)
        return entry.tail

    def _detach(self, subscriber: Subscriber) -> None:
        if self._dispatching:
            self._leaving.append(subscriber)
            return
        for channel in subscriber.channels:
            entry = self._channels.get(channel)
            if entry is None:
                continue
            entry.subscribers.discard(subscriber)
            if not entry.subscribers and entry.ready.ready():
                self._idle(channel, entry)

    def _idle(self, channel: str, entry: _Channel) -> None:
        """A channel's last local subscriber left: unsubscribe, after the grace period."""
        if self._grace <= 0 or self._closing:
            del self._channels[channel]
            self._broker.unsubscribe(channel)
        elif entry.grace is None:
            entry.grace = gevent.get_hub().loop.timer(self._grace, ref=False)
            entry.grace.start(self._grace_over, channel, entry)

    def _grace_over(self, channel: str, entry: _Channel) -> None:
        # In the event loop, which must not wait: unsubscribing may (the broker's connection).
        entry.grace.close()
        entry.grace = None
        gevent.spawn(self._unsubscribe_idle, channel, entry)

    def _unsubscribe_idle(self, channel: str, entry: _Channel) -> None:
        # Unless a subscriber came meanwhile (or came and left, and a new grace period runs).
        if self._channels.get(channel) is entry and not entry.subscribers and entry.grace is None:
            del self._channels[channel]
            self._broker.unsubscribe(channel)

    def dispatch(self, message: Message) -> None:
        """Called by the broker, once per message, in id order per channel.

        While the broker has more messages received already (`more_received`: pipelined
        publishes come back together), they are held, in order, and fanned out with the last
        one: then a run of one channel's events reaches each stream that takes their shared
        bytes in one write, not one per event. Held, they are as if still unread from the
        broker: the channel's tail and recent events move as they are fanned out.
        """
        held = self._held
        if self._broker.more_received():
            held.append(message)
            if not self._release_due:  # should no message end the burst: the next loop turn
                self._release_due = True
                gevent.get_hub().loop.run_callback(self._release_later)
            return
        if held:
            held.append(message)
            self._release()
            return
        self._fan_out(message)

    def _release(self) -> None:
        """Fan the held messages out, in order: each channel's consecutive events as a run."""
        if self._releasing:
            return  # the release under way (it yielded: a drop unsubscribed) takes them in order
        self._releasing = True
        held = self._held
        start = 0
        try:
            while start < len(held):
                first = held[start]
                end = start + 1
                if first.event_id is not None:
                    channel = first.channel
                    while end < len(held) and held[end].channel == channel \
                            and held[end].event_id is not None:
                        end += 1
                run, start = held[start:end], end
                try:
                    if len(run) == 1:
                        self._fan_out(first)
                    else:
                        self._fan_out_run(run)
                except Exception:  # as the broker does for a message it dispatches alone
                    log.exception("fanning out a message on channel %r failed; skipped",
                                  first.channel)
        finally:
            del held[:start]  # killed meanwhile, the rest stay held, for the next dispatch
            self._releasing = False

    def _release_later(self) -> None:
        # In the event loop, which must not wait: a fan-out may (a drop unsubscribes).
        self._release_due = False
        if self._held:
            gevent.spawn(self._release_if_held)

    def _release_if_held(self) -> None:
        if self._held:
            self._release()

    def _fan_out(self, message: Message) -> None:
        entry = self._channels.get(message.channel)
        if entry is None:
            return
        event_id = message.event_id
        if event_id is not None:
            entry.tail = event_id
            recent = entry.recent
            if recent is not None:
                recent.add(message)
        elif message.__class__ is HistoryLost:
            self.lost_deliveries += len(entry.subscribers)
            if entry.recent is not None:
                entry.recent.restart(None)
        self.deliveries += len(entry.subscribers)
        # No copy of the set: a subscriber that leaves meanwhile (its client gone, dropped,
        # a stream rotated) is taken out after the loop. Nothing in the loop yields, so no
        # other greenlet attaches or dispatches while it runs.
        self._dispatching = True
        try:
            for subscriber in entry.subscribers:
                if not subscriber.deliver(message):
                    self._drop_slow(subscriber, "")
        finally:
            self._end_dispatch()

    def _fan_out_run(self, run: List[Message]) -> None:
        """Consecutive events of one channel (with ids): a fast subscriber
        (`EventStream.fast`) takes them as one `Run`, any other one by one."""
        entry = self._channels.get(run[0].channel)
        if entry is None:
            return
        self.deliveries += len(entry.subscribers) * len(run)
        joined = None
        others = []
        self._dispatching = True
        try:
            for subscriber in entry.subscribers:
                if subscriber.fast:
                    if joined is None:
                        joined = Run(run)
                    if not subscriber.deliver(joined):
                        self._drop_slow(subscriber, "")
                else:
                    others.append(subscriber)
            # The others see the tail move event by event, as if each came alone: one whose
            # replay went past some of them filters those, and turns fast only at its own
            # position. A subscriber dropped meanwhile takes the rest as closed ones do.
            recent = entry.recent
            for message in run:
                entry.tail = message.event_id
                if recent is not None:
                    recent.add(message)
                for subscriber in others:
                    if not subscriber.deliver(message):
                        self._drop_slow(subscriber, "")
        finally:
            self._end_dispatch()

    def _end_dispatch(self) -> None:
        self._dispatching = False
        if self._leaving:
            leaving, self._leaving = self._leaving, []
            for subscriber in leaving:
                self._detach(subscriber)

    def _drop_slow(self, subscriber: Subscriber, why: str) -> None:
        """Disconnect a subscriber that cannot keep up, and count it."""
        self.dropped_slow += 1
        if why:
            self.dropped_stalled += 1
        log.info("dropped a subscriber of %s: %s", ",".join(subscriber.channels),
                 why or "its queue is full (--max-pending)")
        subscriber.close()

    def _drop_for_memory(self, seat: Seat) -> None:
        self.dropped_memory += 1  # the budget logs what its drops freed
        seat.subscriber.close()

    def resync(self, channel: str, at: Optional[EventId]) -> None:
        """Called by the broker when history may hold, up to `at`, entries it did not dispatch
        live (read from history after a reconnect, or unreadable); ZERO: there is no history;
        None: what it holds is unknown."""
        if self._held:  # in order with the messages before it
            self._release()
        entry = self._channels.get(channel)
        if entry is not None and entry.recent is not None:
            entry.recent.restart(at)

    def history(self, positions: Dict[str, EventId],
                limit: Optional[int] = None) -> Dict[str, History]:
        """Each channel's events after its position (at most `limit` per channel), as the
        broker's `history` answers: from recent events when they cover every channel asked
        for and the broker is delivering (or connected, for a position at the last event
        dispatched), else from the broker (the channels of one answer are read at one
        instant)."""
        if not positions:
            return {}
        answer = self._recent_history(positions, limit)
        if answer is not None:
            return answer
        self.history_from_broker += 1
        return self._broker.history(positions, limit)

    def history_now(self, positions: Dict[str, EventId],
                    limit: Optional[int] = None) -> Optional[Dict[str, History]]:
        """As `history`, for the event loop, which must not wait: None when only a read from
        the broker could answer. Unlike `history`, it answers too while a publish this
        process acknowledged is still on its way (`own_on_the_way` tells): its event, missing
        here, reaches the attached subscriber live."""
        if not positions:
            return {}
        if self._recent is None and self._broker.history_in_memory:
            self.history_from_broker += 1
            return self._broker.history(positions, limit)
        return self._recent_history(positions, limit, own_on_the_way=True)

    def own_on_the_way(self, channels: Sequence[str]) -> Dict[str, EventId]:
        """Each of `channels` with an event whose publish this process acknowledged and that
        has not been dispatched yet (on its way from the broker, or held back here): the id of
        its last such event."""
        awaited = self._broker.own_on_the_way(channels)
        for message in self._held:
            if message.event_id is not None and message.channel in channels and \
                    message.event_id > awaited.get(message.channel, ZERO):
                awaited[message.channel] = message.event_id
        return awaited

    def dispatched(self, awaited: Dict[str, EventId]) -> bool:
        """Whether each channel's events up to its id in `awaited` have been dispatched."""
        channels = self._channels
        for channel, event_id in awaited.items():
            entry = channels.get(channel)
            if entry is not None and entry.tail < event_id:
                return False
        return True

    def _recent_history(self, positions: Dict[str, EventId], limit: Optional[int],
                        own_on_the_way: bool = False) -> Optional[Dict[str, History]]:
        """`history` from recent events alone; None when they cannot answer."""
        if self._recent is None or not self._broker.connected:
            return None
        now_ms = int(time.time() * 1000)
        answer = {}
        caught_up = None
        for channel, after in positions.items():
            entry = self._channels.get(channel)
            recent = entry.recent if entry is not None else None
            if recent is None:
                return None
            # Events on their way from the broker are missing here: they are all to come, live
            # (or, after a reconnect, from its gap fill), to every attached subscriber. But a
            # position behind the last event dispatched must get every event whose publish
            # this process acknowledged, as a read of Redis would.
            if after != recent.last and not own_on_the_way:
                if caught_up is None:
                    caught_up = not self.own_on_the_way(tuple(positions))
                if not caught_up:
                    return None
            history = recent.history(after, limit, now_ms)
            if history is None:
                return None
            answer[channel] = history
        self.history_from_memory += 1
        return answer

    def close_all(self) -> None:
        """End every subscriber, and unsubscribe channels at once from now on."""
        self._closing = True
        for channel, entry in list(self._channels.items()):
            if entry.grace is not None:
                entry.grace.close()
                entry.grace = None
                if not entry.subscribers:
                    del self._channels[channel]
                    self._broker.unsubscribe(channel)
        for entry in list(self._channels.values()):
            for subscriber in list(entry.subscribers):
                subscriber.end()
