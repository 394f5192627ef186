"""Property-based: the hub's recent events answer a history request exactly as Redis' history
does, for any sequence of publishes (valid or not), subscribers coming and going, trimming by
length, bytes and age, pub/sub reconnects, and any cursor and limit.

A real redis-server; the hub and a second broker run in tests/recent_harness.py (gevent patches
everything there). After each operation, a barrier message makes sure the hub has dispatched
everything published; then the same question goes to the second broker, which never shares a
read and always asks Redis, and to the hub. Whenever the hub answered from memory, the answers
must be the same: the same events (ids and data), in the same order, and the same gap flag.
Each test also checks that memory answered a fair share of the questions.

The examples cost real round trips: each test runs a part of the profile's count. With
HYPOTHESIS_PROFILE=deep, give pytest `--timeout 0` (its 180 s limit would cut an exchange).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Dict, List

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
from hypothesis import given, settings
from hypothesis import strategies as st
from recent_client import Harness

from gateway.ids import format_id, parse_id

# -- the operations ---------------------------------------------------------------------------

CHANNELS = ("a", "b")
DATA = st.text(alphabet="xyz\u00e9\U0001f600 ", min_size=0, max_size=120)
ASK = st.tuples(st.sampled_from([("a",), ("b",), ("a", "b")]), st.none() | st.integers(1, 4))
OPERATION = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(CHANNELS), DATA),
    st.tuples(st.just("publish_many"), st.sampled_from(CHANNELS), st.integers(2, 9)),
    st.tuples(st.just("unreadable"), st.sampled_from(CHANNELS)),
    st.tuples(st.just("attach"), st.sampled_from([("a",), ("b",), ("a", "b")])),
    st.tuples(st.just("leave"), st.integers(0, 3)),
)
RECONNECT = st.tuples(st.just("reconnect"), st.sampled_from(CHANNELS), st.integers(0, 12))
WAIT = st.tuples(st.just("wait"), st.sampled_from([0.02, 0.05, 0.1, 0.35]))


def now_and_then(rare, one_in: int = 8, often=OPERATION):
    """`often`, and one time in `one_in` `rare` (a reconnect or a wait costs real time)."""
    return st.integers(1, one_in).flatmap(lambda n: rare if n == 1 else often)


def cursors(ids: List[str], attached: List[str]):
    """Where a client may stand: nowhere yet, on an event, between two, before or after all of
    them, at a subscriber's start, or in another epoch's history; often near the end."""
    found = ["0-0", "1-0", "18446744073709551615-18446744073709551615", *attached]
    for text in ids:
        ms, seq = parse_id(text)
        found += [text, format_id((ms, seq + 1)), format_id((ms - 1, 999))]
    if ids:
        ms, seq = parse_id(ids[-1])
        found += [format_id((ms + 1, 0)), format_id((ms + 10_000, 0))]
    latest = ids[-5:] + attached[-1:]
    return st.sampled_from(found) | st.sampled_from(latest) if latest else st.sampled_from(found)


def run(harness: Harness, operations, data, prefix: str, seen: Counter) -> None:
    """Each operation, then a question to both (its channels, cursors and limit drawn)."""
    channels = {name: f"{prefix}{name}" for name in CHANNELS}
    published: Dict[str, List[str]] = {name: [] for name in CHANNELS}
    subscribers: List[int] = []
    starts: Dict[str, List[str]] = {name: [] for name in CHANNELS}
    try:
        for operation in operations:
            kind = operation[0]
            if kind == "publish":
                message = json.dumps({"data": operation[2]}, ensure_ascii=False).encode()
                published[operation[1]].append(harness.publish(channels[operation[1]], message))
            elif kind == "publish_many":
                for n in range(operation[2]):
                    message = json.dumps({"data": f"{n}" * n}).encode()
                    published[operation[1]].append(
                        harness.publish(channels[operation[1]], message))
            elif kind == "unreadable":
                # cjson takes it, the gateway does not (not UTF-8): history holds an entry
                # that every reader skips.
                published[operation[1]].append(
                    harness.publish(channels[operation[1]], b'{"data": "\xff"}'))
            elif kind == "attach":
                answer = harness.ask("attach", channels=[channels[n] for n in operation[1]])
                subscribers.append(answer["sub"])
                for name in operation[1]:
                    starts[name].append(answer["positions"][channels[name]])
            elif kind == "leave":
                if subscribers:
                    harness.ask("leave", sub=subscribers.pop(operation[1] % len(subscribers)))
            elif kind == "reconnect":
                harness.ask("kill")
                name = operation[1]
                for _ in range(operation[2]):  # published while the connection is down
                    published[name].append(harness.publish(channels[name], b'{"data": "down"}'))
                harness.ask("reconnected")
            elif kind == "wait":
                time.sleep(operation[1])  # history's age is what this tests
            names, limit = data.draw(ASK, label="ask")
            harness.barrier()
            positions = {channels[name]: data.draw(
                cursors(published[name], starts[name]), label=f"cursor {name}")
                for name in names}
            answer = harness.ask("history", positions=positions, limit=limit)
            seen["memory" if answer["memory"] else "broker"] += 1
            if answer["memory"]:
                assert answer["hub"] == answer["oracle"], (positions, limit)
    finally:
        for sub in subscribers:
            harness.ask("leave", sub=sub)


def check_property(harness: Harness, operation, seen: Counter, divide: int = 3) -> None:
    example = iter(range(1_000_000))

    @settings(max_examples=max(10, settings.default.max_examples // divide))
    @given(operations=st.lists(operation, min_size=1, max_size=14), data=st.data())
    def equal_answers(operations, data):
        # Both channels get a subscriber at some point: before it, all goes to Redis.
        start = data.draw(st.integers(0, len(operations) - 1), label="first subscriber")
        operations.insert(start, ("attach", CHANNELS))
        run(harness, operations, data, f"x{next(example)}", seen)

    equal_answers()


def test_recent_events_answer_as_redis_history_with_count_and_bytes_bounds_and_reconnects(
        start_harness):
    # The ring holds 4 events of at most 300 bytes; Redis keeps 5.
    one = start_harness(5, 4, 300, 3600.0)
    seen: Counter = Counter()
    check_property(one, now_and_then(RECONNECT), seen)
    stats = one.ask("stats")
    assert stats["lost"] > 0, "no sequence lost history across a reconnect"
    assert seen["memory"] > seen["broker"] / 4 and seen["broker"] > 0, seen


def test_recent_events_answer_as_redis_history_when_they_hold_as_many_as_redis(start_harness):
    # The same number of events as Redis' history, so both trim at once.
    one = start_harness(4, 1000, 1 << 20, 3600.0)
    seen: Counter = Counter()
    check_property(one, OPERATION, seen)
    assert seen["memory"] > seen["broker"] / 4 and seen["broker"] > 0, seen


def test_recent_events_answer_as_redis_history_while_it_expires_and_is_trimmed_by_age(
        start_harness):
    # Events older than 0.3 s are trimmed at the next publish; a channel quiet for that long
    # has no history at all.
    one = start_harness(50, 1000, 1 << 20, 0.3)
    seen: Counter = Counter()
    check_property(one, now_and_then(WAIT, 3), seen, divide=6)
    assert seen["memory"] > 0 and seen["broker"] > 0, seen
