"""Rotation of the padded stream (XHR and XDomainRequest streaming) is invisible to the page:
every event once and in order, one `open`, no `error`, while the gateway ends response after
response."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

CHANNEL = "rotating"
STREAMING = ["xhr-stream", "xdr-stream"]


def stream_requests(harness):
    return [r for r in harness.requests_to(harness.events_url(CHANNEL))
            if "transport=stream" in r.url]


def resume_ids(requests):
    return [parse_qs(urlsplit(r.url).query).get("lastEventId", [None])[0] for r in requests]


@pytest.mark.parametrize("transport", STREAMING)
def test_rotation_by_bytes_is_invisible_to_the_page(
        transport, start_gateway, broker_args, open_harness, publisher):
    gateway = start_gateway(*broker_args, "--rotate-bytes", "4096")
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport)
    harness.wait_open()
    pub = publisher(gateway)
    filler = "x" * 150
    ids = []
    # In groups of 10 (about 1.7 KB), each delivered before the next is published: the gateway
    # checks the size after each write, so a single burst would fill one oversized response.
    for group in range(15):
        ids += [pub.publish(CHANNEL, f"{i} {filler}") for i in range(group * 10, group * 10 + 10)]
        harness.wait_received(len(ids))
    harness.observe(0.3)  # a duplicate would arrive within this
    got = harness.received()
    assert [e["data"] for e in got] == [f"{i} {filler}" for i in range(150)]
    assert [e["lastEventId"] for e in got] == ids
    assert harness.opens() == [1]
    assert harness.errors() == []
    assert harness.ready_state() == 1
    # About 25 KB of events in responses of 4 KB: the stream was rotated several times. Each new
    # request resumed from the last id the page had: an event's, or at first the empty
    # channel's cursor that the first response sent.
    requests = stream_requests(harness)
    assert len(requests) >= 5, [r.url for r in requests]
    assert set(resume_ids(requests[1:])) <= set(ids) | {"0-0"}


@pytest.mark.parametrize("transport", STREAMING)
def test_rotation_by_time_is_invisible_to_the_page(
        transport, start_gateway, open_harness, publisher):
    gateway = start_gateway("--rotate-seconds", "1")
    harness = open_harness(gateway.url, transport)
    harness.listen(harness.events_url(CHANNEL), transport)
    harness.wait_open()
    pub = publisher(gateway)
    ids = []
    for i in range(3):
        # Publish into the current response; the next event only after the gateway rotated it.
        before = len(stream_requests(harness))
        ids.append(pub.publish(CHANNEL, f"between rotations {i}"))
        harness.wait_received(i + 1)
        harness.wait_requests(harness.events_url(CHANNEL), before + 1, timeout=10,
                              where=lambda r: "transport=stream" in r.url)
    got = harness.received()
    assert [e["data"] for e in got] == [f"between rotations {i}" for i in range(3)]
    assert [e["lastEventId"] for e in got] == ids
    assert harness.opens() == [1]
    assert harness.errors() == []
