"""The server's reusable connection greenlets, driven directly in this process's gevent loop."""

import gevent
import gevent.event

from gateway.greenlet_pool import GreenletPool


def wait_for(condition, timeout: float = 5.0) -> None:
    """Let the loop run until `condition` holds (bounded)."""
    with gevent.Timeout(timeout):
        while not condition():
            gevent.sleep(0.001)


def run_job(workers: GreenletPool, release: gevent.event.Event, seen: list) -> None:
    def job() -> None:
        seen.append(gevent.getcurrent())
        release.wait(5)
    workers(job)


def test_a_finished_worker_takes_the_next_job_instead_of_a_new_greenlet():
    workers = GreenletPool(keep=4)
    seen: list = []
    release = gevent.event.Event()
    release.set()
    for _ in range(5):
        run_job(workers, release, seen)
        assert workers.join(5)
    assert len(seen) == 5 and len(set(seen)) == 1


def test_jobs_queued_together_that_do_not_block_run_one_after_another_on_one_greenlet():
    workers = GreenletPool(keep=4)
    seen: list = []
    release = gevent.event.Event()
    release.set()
    for _ in range(50):
        run_job(workers, release, seen)
    assert workers.join(5)
    assert len(seen) == 50 and len(set(seen)) == 1


def test_jobs_that_find_every_worker_busy_start_new_ones_and_all_run_at_once():
    workers = GreenletPool(keep=2)
    seen: list = []
    release = gevent.event.Event()
    for _ in range(6):
        run_job(workers, release, seen)
    wait_for(lambda: len(seen) == 6)
    assert len(set(seen)) == 6  # none waited for another to finish
    assert workers.busy == 6 and not workers.join(0.05)
    release.set()
    assert workers.join(5) and workers.busy == 0
    gevent.sleep(0)
    living = [g for g in set(seen) if not g.dead]
    assert len(living) == 2  # `keep` of them wait for more work, the rest ended
    again: list = []
    run_job(workers, release, again)
    assert workers.join(5)
    assert again[0] in living


def test_a_job_that_raises_is_reported_and_its_worker_goes_on(capsys):
    workers = GreenletPool(keep=1)
    seen: list = []

    def failing() -> None:
        seen.append(gevent.getcurrent())
        raise ValueError("job failed on purpose")

    workers(failing)
    assert workers.join(5)
    release = gevent.event.Event()
    release.set()
    run_job(workers, release, seen)
    assert workers.join(5)
    assert seen[0] is seen[1]
    assert "job failed on purpose" in capsys.readouterr().err
