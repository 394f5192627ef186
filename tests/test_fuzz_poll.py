"""Property-based fuzzing of the long-poll encoders (gateway/transports/poll.py): JSON for XHR,
JSONP for script tags. The callback is the one piece of the request a JSONP answer reflects."""

from __future__ import annotations

import json
import re

import hypothesis_profile  # noqa: F401  (registers and loads the Hypothesis profile)
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.message import InvalidMessage, from_publish_body
from gateway.transports.poll import CALLBACK, encode_json, encode_jsonp

# The callback grammar as intended: a plain identifier, no property paths.
INTENDED_CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}")
IDENTIFIER = st.from_regex(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}", fullmatch=True)
TRICKY_CALLBACK = st.sampled_from([
    "", "cb", "a.b", "jQuery.cb", "window.alert", "$", "_", "1cb", "cb()", "cb;alert(1)//",
    "cb\n", "x" * 64, "x" * 65, "alert`1`", "a-b", "c\u00e9", "\u0441b", "cb ", "a[0]", "</script>",
])
CALLBACK_TEXT = IDENTIFIER | TRICKY_CALLBACK | st.text(max_size=70) | st.from_regex(
    r"[A-Za-z_$.][\w$.()\[\];`'\" -]{0,66}", fullmatch=True)
_TRICKY = ["\u2028", "\u2029", "\r\n", "\0", "</script>", "*/", "\\", '"', "\ufeff", "é", "🎉"]
# codec="utf-8": no lone surrogates, which characters() alone may give.
TEXT = st.lists(st.characters(codec="utf-8") | st.sampled_from(_TRICKY), max_size=20).map("".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def poll_body(items: list) -> dict:
    """A long-poll answer as poll() builds it, from messages as publishers send them."""
    events = []
    for n, (data, event, source_id) in enumerate(items):
        try:
            message = from_publish_body("chat", {"data": data, "event": event, "id": source_id})
        except InvalidMessage:
            continue
        events.append({**message.to_dict(), "id": f"17000000000{n:02d}-0"})
    return {"events": events, "lastEventId": "1700000000099-0", "retry": 3000}


POLL_BODY = st.lists(st.tuples(JSON, st.none() | TEXT, st.none() | TEXT), max_size=4).map(
    poll_body) | st.dictionaries(TEXT, JSON, max_size=4)


@given(callback=IDENTIFIER, body=POLL_BODY)
@example(callback="cb", body={"events": [{"data": "\u2028\u2029</script>*/"}]})
def test_a_jsonp_answer_is_ascii_and_calls_the_callback_with_the_body(callback, body):
    out = encode_jsonp(callback, body)
    out.decode("ascii")  # raises if it is not ASCII, so U+2028/2029 cannot be there raw
    prefix, suffix = f"/**/{callback}(".encode(), b");"
    assert out.startswith(prefix) and out.endswith(suffix)
    assert json.loads(out[len(prefix):-len(suffix)]) == body


@given(callback=CALLBACK_TEXT, body=st.just({"events": [], "lastEventId": "0-0", "retry": 1}))
@example(callback="a.b", body={})
def test_a_callback_is_used_only_when_it_is_a_plain_identifier_and_refused_otherwise(callback,
                                                                                     body):
    allowed = INTENDED_CALLBACK.fullmatch(callback) is not None
    assert (CALLBACK.fullmatch(callback) is not None) == allowed
    try:
        out = encode_jsonp(callback, body)
    except ValueError:
        assert not allowed
        return
    assert allowed and out.startswith(f"/**/{callback}(".encode())



@given(callback=CALLBACK_TEXT)
@example(callback="cb;alert(1)//")
@example(callback="cb\n")
def test_any_callback_is_refused_with_value_error_or_reflected_only_as_an_identifier_path(callback):
    try:
        out = encode_jsonp(callback, {})
    except ValueError:
        return
    # Whatever the grammar's final form, nothing but identifier characters and dots gets through.
    assert re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}", callback)
    assert out == f"/**/{callback}({{}});".encode("ascii")


@given(body=POLL_BODY)
@example(body={"events": [{"data": "\u2028 stays raw: valid JSON"}]})
def test_a_json_answer_is_utf8_json_of_the_body(body):
    assert json.loads(encode_json(body).decode("utf-8")) == body
