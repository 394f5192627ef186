"""A fair limit on how many greenlets hold a resource at once (for a pool of Redis connections).

Whoever has waited longest is served first: a released slot is handed straight to the oldest
waiter, so a stream of newcomers cannot overtake it (gevent's Semaphore lets a newcomer take a
slot that was released while its waiter had not yet woken). A wait is bounded by its timeout.
"""

from collections import deque
from contextlib import contextmanager
from typing import Deque, Iterator

import gevent.event


class NoSlot(Exception):
    """No slot became free within the timeout."""


class Slots:
    __slots__ = ("size", "free", "_waiters")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one slot")
        self.size = size
        self.free = size
        self._waiters: Deque[gevent.event.Event] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting in line at most `timeout` seconds; whether one was taken."""
        if self.free and not self._waiters:
            self.free -= 1
            return True
        handed = gevent.event.Event()
        self._waiters.append(handed)
        try:
            handed.wait(timeout)
        except BaseException:
            self._give_up(handed)
            raise
        if handed.is_set():
            return True
        self._waiters.remove(handed)
        return False

    def _give_up(self, handed: gevent.event.Event) -> None:
        if handed.is_set():
            self.release()  # handed over just before the wait was interrupted: pass it on
        else:
            self._waiters.remove(handed)

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self.free += 1

    @contextmanager
    def hold(self, timeout: float) -> Iterator[None]:
        """A slot for the duration of the block; raises NoSlot after `timeout` seconds."""
        if not self.acquire(timeout):
            raise NoSlot(f"none of {self.size} became free within {timeout:g} s "
                         f"({len(self._waiters)} more waiting)")
        try:
            yield
        finally:
            self.release()
