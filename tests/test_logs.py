"""`--log-format json`: one JSON object per line, and no secret in any log."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import redis
from conftest import ROOT, RedisServer
from sse_client import Stream, subscribed

from gateway import logs

TOKEN = "tok-SECRET-4f1c"
PASSWORD = "pw-SECRET-9a2e"


@pytest.fixture
def redis_with_password():
    server = RedisServer()
    server.client = redis.Redis(port=server.port, password=PASSWORD, socket_timeout=5)
    server.start("--requirepass", PASSWORD)
    try:
        yield server
    finally:
        server.cleanup()


def test_json_logs_are_one_object_per_line_and_hold_no_secret(start_gateway,
                                                               redis_with_password):
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_with_password.port}/0"
    gateway = start_gateway("--redis-url", url, "--publish-token", TOKEN, "--log-format", "json",
                            "--log-level", "debug")
    with Stream(gateway.url + "/events/logged") as stream:
        stream.wait_for(subscribed)
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert gateway.publish("logged", {"data": "x"}, headers=good).status_code == 200
        stream.wait_events(1)
        bad = {"Authorization": "Bearer wrong"}
        assert gateway.publish("logged", {"data": "x"}, headers=bad).status_code == 403
    assert gateway.stop() == 0
    text = gateway.log()
    lines = text.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "event", "logger", "pid"} <= set(record), record
        assert record["level"] in ("debug", "info", "warning", "error", "critical")
        assert record["time"].endswith("Z") and "T" in record["time"]
    events = [r["event"] for r in records]
    assert any(e.startswith("listening on http://127.0.0.1:") for e in events), events
    assert any("subscribed to logged" in e for e in events), events
    assert events[-1] == "stopped"
    assert "SECRET" not in text


def test_secrets_are_masked_in_messages_fields_and_tracebacks(capsys):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure(logging.INFO, "json",
                       secrets=logs.secrets_of([TOKEN], f"redis://:{PASSWORD}@h:6379/0"))
        log = logging.getLogger("gateway.test")
        log.info("a token %s and a password %s", TOKEN, PASSWORD, extra={"channel": "c"})
        try:
            raise ValueError(f"failed with {TOKEN}")
        except ValueError:
            log.exception("it failed")
        logs.configure(logging.INFO, "text", secrets=[TOKEN])
        log.warning("text too: %s", TOKEN)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "SECRET" not in err
    first, second, third = err.splitlines()[0], err.splitlines()[1], err.splitlines()[-1]
    assert json.loads(first)["event"] == "a token *** and a password ***"
    assert json.loads(first)["channel"] == "c"
    failure = json.loads(second)
    assert failure["event"] == "it failed" and "ValueError: failed with ***" in failure["exception"]
    assert third.endswith("WARNING gateway.test: text too: ***")


def test_an_unknown_log_format_is_refused():
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve", "--log-format", "xml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "log-format must be text or json" in proc.stderr
