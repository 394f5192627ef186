"""Greenlets for the server's connections, reused from one connection to the next.

A new greenlet costs more than most requests here: Python maps a fresh frame stack for each
one (an mmap and a munmap per connection), and an event stream's request is over in a few
dozen microseconds. Finished workers wait for the next connection instead; new ones start only
when every worker is busy, and workers beyond `keep` idle ones end.
"""

import sys
from typing import Any, Callable

import gevent
import gevent.event
import gevent.queue


class GreenletPool:
    """A `spawn` callable for a gevent server, and a way to wait for the work in hand."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._jobs: gevent.queue.Queue = gevent.queue.Queue()
        self._idle = 0
        self._busy = 0
        self._done = gevent.event.Event()
        self._done.set()

    def __call__(self, func: Callable[..., Any], *args: Any) -> None:
        self._busy += 1
        self._done.clear()
        if self._idle > self._jobs.qsize():
            self._jobs.put((func, args))
        else:
            gevent.spawn(self._work, func, args)

    @property
    def busy(self) -> int:
        return self._busy

    def join(self, timeout: float) -> bool:
        """Wait until no job runs or is waiting; False if some still do after `timeout`."""
        return self._done.wait(timeout)

    def _work(self, func: Callable[..., Any], args: tuple) -> None:
        while True:
            try:
                func(*args)
            except Exception:
                gevent.get_hub().handle_error(func, *sys.exc_info())
            finally:
                self._busy -= 1
                if not self._busy:
                    self._done.set()
            if self._idle >= self._keep:
                return
            self._idle += 1
            try:
                func, args = self._jobs.get()
            finally:
                self._idle -= 1
