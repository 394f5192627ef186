"""Greenlets for the server's connections, reused from one connection to the next.

A new greenlet costs more than most requests here: Python maps a fresh frame stack for each
one (an mmap and a munmap per connection), and an event stream's request is over in a few
dozen microseconds. So jobs wait in a queue, and a worker greenlet runs them one after another:
at most BATCH in a row, then the event loop gets a turn (to accept more connections and read
Redis) before a worker goes on. Another worker takes over whenever one blocks; a new one starts
only when none is parked, and at most `keep` stay parked once the queue is empty. The turn
that hands the queue to a worker comes through the process' `Wakeups`, not gevent's callback
queue, which a saturated loop runs late.
"""

import sys
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple

import gevent
import gevent.event
from gevent.hub import Waiter
from greenlet import greenlet

from .wakeups import Wakeups

BATCH = 32


class GreenletPool:
    """A `spawn` callable for a gevent server, and a way to wait for the work in hand."""

    def __init__(self, keep: int, wakeups: Optional[Wakeups] = None) -> None:
        """`wakeups`: the process' (the pool makes its own if none is given)."""
        self._keep = keep
        self._wakeups = wakeups if wakeups is not None else Wakeups()
        self._jobs: Deque[Tuple[Callable[..., Any], tuple]] = deque()
        self._parked: List[Waiter] = []
        self._scheduled = False
        self._busy = 0
        self._done = gevent.event.Event()
        self._done.set()

    def __call__(self, func: Callable[..., Any], *args: Any) -> None:
        self._busy += 1
        self._done.clear()
        self._jobs.append((func, args))
        self._schedule()

    @property
    def busy(self) -> int:
        """Jobs queued or running."""
        return self._busy

    def join(self, timeout: float) -> bool:
        """Wait until no job runs or is waiting; False if some still do after `timeout`."""
        return self._done.wait(timeout)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._wakeups.call_soon(self._next)

    def _next(self) -> None:
        # In the hub, once whoever ran before has finished its batch or blocked.
        self._scheduled = False
        if self._jobs:
            if self._parked:
                self._parked.pop().switch(None)
            else:
                # Started here and now: gevent.spawn would start it from the callback queue.
                greenlet(self._work, parent=gevent.get_hub()).switch()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            for _ in range(BATCH):
                if not jobs:
                    break
                func, args = jobs.popleft()
                if jobs:
                    self._schedule()  # should this job block, another worker goes on
                try:
                    func(*args)
                except Exception:
                    gevent.get_hub().handle_error(func, *sys.exc_info())
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._done.set()
            if jobs:
                self._schedule()
            if len(self._parked) >= self._keep:
                return
            waiter = Waiter()
            self._parked.append(waiter)
            waiter.get()
