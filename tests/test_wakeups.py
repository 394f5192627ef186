"""Wake-ups run in the event loop's next turn while gevent's callback queue is flooded.

gevent runs its callback queue for a switch interval (a few milliseconds) a turn, then lets the
loop go on: with a flood of slow callbacks queued, anything queued behind them runs a second
later. A wake-up through `Wakeups` (and so a `Latch` and the greenlet pool's turn) must run in
the next turn instead. In this process's own event loop, no sockets.
"""

import time

import gevent
import pytest

from gateway.greenlet_pool import GreenletPool
from gateway.wakeups import Latch, Wakeups

FLOOD = 2000  # callbacks queued ahead
SPIN = 0.0005  # seconds each one takes: the whole flood takes a second


class Flood:
    """FLOOD slow callbacks queued in gevent's callback queue; `ran` counts those that ran."""

    def __init__(self) -> None:
        self.ran = 0
        self.started = False

    def start(self) -> None:
        self.started = True
        loop = gevent.get_hub().loop
        for _ in range(FLOOD):
            loop.run_callback(self._slow)

    def _slow(self) -> None:
        end = time.perf_counter() + SPIN
        while time.perf_counter() < end:
            pass
        self.ran += 1


@pytest.fixture
def flood():
    flood = Flood()
    yield flood
    with gevent.Timeout(30):
        while flood.started and flood.ran < FLOOD:  # leave no callback behind for the next test
            gevent.sleep(0.01)


def wait_for(condition, timeout: float = 10.0) -> None:
    with gevent.Timeout(timeout):
        while not condition():
            gevent.sleep(0.001)


def test_a_wake_up_runs_before_the_flooded_callback_queue_is_through(flood):
    wakeups = Wakeups()
    seen = []
    flood.start()
    wakeups.call_soon(lambda: seen.append(("woken", flood.ran)))
    gevent.get_hub().loop.run_callback(lambda: seen.append(("queued", flood.ran)))
    wait_for(lambda: len(seen) == 2)
    (first, ran_before), (second, ran_after) = seen
    assert (first, second) == ("woken", "queued")
    assert ran_before < FLOOD / 4, f"the wake-up waited for {ran_before} of {FLOOD} callbacks"
    assert ran_after == FLOOD  # the queue itself keeps its order: that one came last


def test_wake_ups_asked_for_together_run_in_order_and_each_once():
    wakeups = Wakeups()
    seen: list = []
    for n in range(100):
        wakeups.call_soon(seen.append, n)
    wait_for(lambda: len(seen) == 100)
    gevent.sleep(0.01)
    assert seen == list(range(100))


def test_a_greenlet_waiting_on_a_latch_resumes_in_the_next_turn(flood):
    latch = Latch(Wakeups())
    resumed = []

    def waiter() -> None:
        resumed.append((latch.get(), flood.ran))

    gevent.spawn(waiter)
    gevent.sleep(0)  # it waits now
    flood.start()
    latch.set("subscribed")
    wait_for(lambda: resumed)
    value, ran = resumed[0]
    assert value == "subscribed"
    assert ran < FLOOD / 4, f"the waiter waited for {ran} of {FLOOD} callbacks"
    assert latch.ready() and latch.successful() and latch.get() == "subscribed"


def test_a_latch_set_with_an_exception_raises_it_to_every_waiter():
    latch = Latch(Wakeups())
    errors = []

    def waiter() -> None:
        try:
            latch.get()
        except LookupError as error:
            errors.append(error)

    waiters = [gevent.spawn(waiter) for _ in range(3)]
    gevent.sleep(0)
    failure = LookupError("the broker refused")
    latch.set_exception(failure)
    gevent.joinall(waiters, timeout=5)
    assert errors == [failure] * 3
    assert latch.ready() and not latch.successful()
    with pytest.raises(RuntimeError):
        latch.set(True)


def test_the_greenlet_pool_starts_a_job_in_the_next_turn(flood):
    pool = GreenletPool(keep=2, wakeups=Wakeups())
    started = []
    flood.start()
    pool(lambda: started.append(flood.ran))
    wait_for(lambda: started)
    assert started[0] < FLOOD / 4, f"the job waited for {started[0]} of {FLOOD} callbacks"
    assert pool.join(5)
