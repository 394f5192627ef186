"""The pure parts of private channels, without a server: channel patterns, what a claim
covers, the access log's redaction, the application's answers, minting."""

import time

import jwt
import pytest

from gateway.auth.callback import Answer, _answer
from gateway.auth.policy import PrivateChannels, check_pattern, uncovered
from gateway.http.redact import redact_target
from gateway.tokens import mint

SECRET = "a-unit-test-secret-of-thirty-two-bytes"


def test_private_patterns_are_globs_matched_whole_and_case_sensitively():
    private = PrivateChannels(["user.*", "room.?", "order.[0-9]*"])
    assert private.private(["user.1", "users.1", "User.1", "room.a", "room.ab", "order.7x",
                            "order.x", "news"]) == ["user.1", "room.a", "order.7x"]
    assert not PrivateChannels([]) and PrivateChannels([]).private(["user.1"]) == []
    assert PrivateChannels(["*"]).private(["a", "b.c"]) == ["a", "b.c"]


@pytest.mark.parametrize("pattern", ["", "user/*", "a b", "x" * 129, "user.\n"])
def test_a_pattern_outside_the_channel_alphabet_is_refused(pattern):
    with pytest.raises(ValueError, match="channel pattern"):
        check_pattern(pattern)


def test_a_claim_covers_by_name_or_pattern_and_an_invalid_pattern_covers_nothing():
    assert uncovered(["user.42"], ["user.42", "user.43"]) == ["user.43"]
    assert uncovered(["user.*", "room.1"], ["user.9", "room.1", "room.2"]) == ["room.2"]
    assert uncovered(["user/*", "*"], ["a"]) == []  # one valid pattern suffices
    assert uncovered(["user/*"], ["user.1"]) == ["user.1"]
    assert uncovered([], ["a"]) == ["a"]


@pytest.mark.parametrize("target, logged", [
    ("/events/x?token=abc&lastEventId=1", "/events/x?token=[redacted]&lastEventId=1"),
    ("/poll/x?a=1&T%6Fken=zz#f", "/poll/x?a=1&T%6Fken=[redacted]#f"),
    ("/poll/x?access_token=q&x=token", "/poll/x?access_token=[redacted]&x=token"),
    ("/events/x?token", "/events/x?token"),
    ("/events/x", "/events/x"),
])
def test_the_access_log_redacts_every_token_parameter(target, logged):
    assert redact_target(target) == logged


def test_the_applications_answers_are_read_strictly():
    assert _answer(200, b"") == Answer(200, None, None)
    assert _answer(204, b"  ") == Answer(200, None, None)
    narrowed = _answer(200, b'{"channels": ["user.1"], "ttl": 60}')
    assert narrowed.channels == ("user.1",) and 59 < narrowed.expires - time.time() <= 60
    assert _answer(401, b"").status == 401
    assert {_answer(status, b"").status for status in (302, 400, 403, 404, 499)} == {403}
    for status, body in ((500, b""), (503, b""), (200, b"<html>"), (200, b"[]"),
                         (200, b'{"channels": "user.1"}'), (200, b'{"ttl": 0}'),
                         (200, b'{"ttl": true}'), (200, b'{"ttl": "60"}')):
        with pytest.raises(ValueError):
            _answer(status, body)


def test_minted_tokens_carry_exp_and_the_channel_claims():
    token = mint(SECRET, subscribe=["user.42"], publish=["orders.*"], ttl=90, subject="42",
                 audience="push", now=1_000)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="push",
                        options={"verify_exp": False})
    assert claims == {"iat": 1_000, "exp": 1_090, "subscribe": ["user.42"],
                      "publish": ["orders.*"], "aud": "push", "sub": "42"}
    for bad in ({"key": "short"}, {"ttl": 0}, {"subscribe": ["user/1"]}):
        with pytest.raises(ValueError):
            mint(**{"key": SECRET, "subscribe": ["a"], **bad})
