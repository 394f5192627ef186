"""Wake-ups that the event loop runs in its next turn, however saturated the process is.

gevent's own way to run something soon (`loop.run_callback`, and so `Event.set`,
`AsyncResult.set`, a greenlet's spawn) is a queue that the loop runs for a few milliseconds a
turn (the switch interval) and then leaves for the next turn. In a saturated process that queue
holds thousands of entries while the requests that I/O wakes run ahead of them, so a wake-up
put there waits for seconds: a held poll times out with its event queued, a greenlet waiting
for its channel's subscription, or a connection waiting for a pool worker, runs late.

A timer due at once does not wait so: each turn libev runs every due timer along with the I/O
that is ready, and does not wait for I/O while one is due. So `Wakeups` keeps the callbacks due
in a list and one such timer, started when the list stops being empty; callbacks that become
due while the list runs wait for the next turn. One instance serves a process (its one event
loop): the server makes it and passes it to what wakes greenlets.
"""

import logging
from typing import Any, Callable, List, Optional, Tuple

from gevent.hub import Waiter, get_hub

log = logging.getLogger(__name__)


class Wakeups:
    """Callbacks to run in the event loop's next turn, in the order they were asked for."""

    __slots__ = ("_due", "_timer")

    def __init__(self) -> None:
        """For the event loop of the calling thread."""
        self._due: List[Tuple[Callable[..., Any], tuple]] = []
        self._timer = get_hub().loop.timer(0.0, ref=False)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` in the hub, in the loop's next turn. It may switch to a
        greenlet (`Waiter.switch`), which comes back to the hub when it next blocks."""
        self._due.append((callback, args))
        if not self._timer.active:
            self._timer.start(self._run)

    def close(self) -> None:
        """Run nothing more (what is due is dropped)."""
        self._due = []
        self._timer.close()

    def _run(self) -> None:
        due, self._due = self._due, []
        for callback, args in due:
            try:
                callback(*args)
            except Exception:
                log.exception("a wake-up failed")


class Latch:
    """A result set once, which greenlets wait for (`get`), woken through `Wakeups`.

    What the hub's channels use for "the broker has confirmed the subscription": as gevent's
    `AsyncResult`, without its callback queue.
    """

    __slots__ = ("_wakeups", "_waiters", "_value", "_error", "_set")

    def __init__(self, wakeups: Wakeups) -> None:
        self._wakeups = wakeups
        self._waiters: List[Waiter] = []
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._set = False

    def ready(self) -> bool:
        return self._set

    def successful(self) -> bool:
        return self._set and self._error is None

    def set(self, value: Any = None) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def get(self) -> Any:
        """The value, once set (blocking until then); raises the exception if one was set."""
        if not self._set:
            waiter = Waiter()
            self._waiters.append(waiter)
            try:
                waiter.get()
            finally:
                if waiter in self._waiters:  # left early (a timeout, a kill)
                    self._waiters.remove(waiter)
        if self._error is not None:
            raise self._error
        return self._value

    def _finish(self, value: Any, error: Optional[BaseException]) -> None:
        if self._set:
            raise RuntimeError("a Latch is set once")
        self._value, self._error, self._set = value, error, True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._wakeups.call_soon(waiter.switch, None)
