"""Property tests of the long-poll's request reading and answer encoding, which take shortcuts
for speed: each must give exactly what the plain way gives.

- An answer's JSON and JSONP, built from each event's encoding made once for every poll
  (`transports.poll.Answer`), are the bytes `encode_json` / `encode_jsonp` make of its body.
- A query read by `subscribe.Query`, which decodes escapes only where there are any, has the
  values `urllib.parse.parse_qsl` finds.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_plus

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.message import InvalidMessage, from_publish_body
from gateway.subscribe import Query
from gateway.transports.poll import Answer, encode_json, encode_jsonp

_TRICKY = ["\u2028", "\u2029", "\r\n", "\r", "\0", "</script>", "\\", '"', "\ufeff", "é", "🎉",
           " ", "=", ",", "-"]
TEXT = st.lists(st.characters(codec="utf-8") | st.sampled_from(_TRICKY), max_size=12).map("".join)
IDS = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
CURSOR = st.one_of(st.from_regex(r"[0-9]{1,20}-[0-9]{1,20}", fullmatch=True),
                   st.from_regex(r"[a-z]{1,3}=[0-9]{1,5}-[0-9](,[a-z]=[0-9]-[0-9])*", fullmatch=True),
                   TEXT)


@st.composite
def answers(draw) -> Answer:
    events = []
    for _ in range(draw(st.integers(0, 4))):
        try:
            message = from_publish_body(draw(st.sampled_from(["a", "b.c"])), {
                "data": draw(TEXT), "event": draw(st.none() | TEXT),
                "id": draw(st.none() | TEXT)})
        except InvalidMessage:
            continue
        if draw(st.booleans()):
            # An event with an id, as one-channel polls share it.
            events.append((message.with_id(draw(IDS)), None))
        else:
            events.append((message, draw(CURSOR)))
    return Answer(events, draw(CURSOR), draw(st.integers(0, 86_400_000)))


@given(answer=answers(), callback=st.from_regex(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}", fullmatch=True))
def test_an_answer_is_exactly_the_encoding_of_its_body_in_json_and_jsonp(answer, callback):
    body = answer.to_dict()
    for _ in range(2):  # and again, from the encodings made the first time
        assert answer.json() == encode_json(body)
        assert answer.jsonp(callback) == encode_jsonp(callback, body)


QUERY_TEXT = st.lists(st.sampled_from(["a", "b", "=", "&", "%", "+", "2", "F", "%2B", "%3D",
                                       "%FF", "%C3%A9", "é", ";", " ", "channel=x"]),
                      max_size=16).map("".join)


@given(query=QUERY_TEXT | st.text(max_size=30))
@example(query="channel=a&&channel=b&lastEventId=1-0%201&x")
def test_a_query_has_the_values_parse_qsl_finds(query):
    expected: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        expected.setdefault(name, []).append(value)
    args = Query(query)
    assert {name: args.getlist(name) for name in expected} == expected
    for name, values in expected.items():
        assert name in args and args.get(name) == values[0]
    named = {part.partition("=")[0] for part in query.split("&")}
    for name in named | {unquote_plus(name) for name in named}:
        assert (name in args) == (name in expected), name
