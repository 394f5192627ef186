"""A Redis outage seen from a page: the gateway's "come back later" answers keep every transport
retrying with its last event id, and once Redis is back the page gets exactly what it missed."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from gateway import Publisher

from .support import TRANSPORTS, PinnedGateway, wait_until

CHANNEL = "outage"


class GatewayWithoutRedis(PinnedGateway):
    """A gateway started while its Redis is down: ready once /healthz answers, with a 503."""

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited early:\n{self.log()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 503
        except requests.RequestException:
            return False


def resume_id(request):
    """The last event id a request carried: query parameter (polyfill) or header (native)."""
    query = parse_qs(urlsplit(request.url).query)
    return query.get("lastEventId", [None])[0] or request.all_headers().get("last-event-id")


def answered_subscriptions(harness, since: int, count: int, timeout: float = 30.0) -> list:
    """Wait until the page has had `count` answers to its subscriptions after its first `since`
    answers of any kind."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in harness.answered[since:]
                 if urlsplit(r.url).path.endswith((f"/events/{CHANNEL}", f"/poll/{CHANNEL}"))]
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{len(found)} answers to the page's subscriptions, not {count}")
        harness.page.wait_for_timeout(50)  # lets Playwright deliver the page's events


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_turned_away_during_a_redis_outage_keeps_its_last_id_and_misses_nothing(
        transport, redis_db, pinned_gateways, open_harness, publisher):
    args = ["--redis-url", redis_db.url, "--retry", "500", "--heartbeat", "2"]
    first = pinned_gateways(args)
    harness = open_harness(first.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport)
    harness.wait_open()
    seen = [publisher(first).publish(CHANNEL, f"seen {i}") for i in range(2)]
    harness.wait_received(2)

    # The page loses its gateway; an event is published while it is away; then Redis goes down
    # too (saved first, so that it comes back with the history) and a gateway comes back
    # without it: every answer the page gets now is the gateway's "come back later".
    since = len(harness.answered)
    first.stop()
    missed = Publisher(redis_db.url).publish(CHANNEL, "missed")["id"]
    redis_db.client.save()
    redis_db.stop()
    second = GatewayWithoutRedis(first.port, args)
    try:
        turned_away = answered_subscriptions(harness, since, 3)
        assert {r.response().status for r in turned_away} == {200}
        # Each request after an outage answer still names the last event the page received.
        assert [resume_id(r) for r in turned_away] == [seen[-1]] * len(turned_away)
        assert len(harness.received()) == 2
        assert 2 not in harness.errors(), "the source must never close"

        redis_db.start()
        wait_until(lambda: second.health()["status"] == "ok", 30,
                   message="the gateway to reconnect to Redis")
        after = publisher(second).publish(CHANNEL, "after")
        got = harness.wait_received(4, timeout=30)
        harness.observe(0.3)  # a duplicate would arrive within this
        got = harness.received()
        assert [e["data"] for e in got] == ["seen 0", "seen 1", "missed", "after"]
        assert [e["lastEventId"] for e in got] == seen + [missed, after]
        assert all(e["type"] == "message" for e in got)  # no gateway-reset
        assert harness.ready_state() == 1
    finally:
        second.cleanup()
        try:
            os.unlink(os.path.join(redis_db.dir, "dump.rdb"))
        except FileNotFoundError:
            pass
