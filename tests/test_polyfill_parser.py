"""The EventSource polyfill (static_js/) run in node: its event-stream parser against the WHATWG
rules with real byte sequences, its facade (reconnection, rotation, backoff) with a fake XHR and a
virtual clock, and the webassets bundle (minified, nothing leaked to window, ES3 lint clean)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from child_processes import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
STATIC_JS = ROOT / "static_js"
NODE = shutil.which("node")


# Runs in node. argv: mode ("parser" or "bundle"), path of the script to load. stdin: JSON input.
HARNESS = r"""
const fs = require("fs"), vm = require("vm");
const [mode, file] = process.argv.slice(1);
const input = JSON.parse(fs.readFileSync(0, "utf8"));
const code = fs.readFileSync(file, "utf8");

function parse(cases) {
  const ctx = vm.createContext({});
  vm.runInContext(code, ctx);
  return cases.map((responses) => {
    const out = {events: [], retries: [], ids: []};
    const p = new ctx.Parser((type, data, id) => out.events.push([type, data, id]),
                             (ms) => out.retries.push(ms));
    for (const chunks of responses) {
      p.reset();
      // As a browser's responseText: UTF-8 decoded as bytes arrive, one leading BOM removed.
      const dec = new TextDecoder("utf-8");
      for (const c of chunks) p.feed(dec.decode(Buffer.from(c, "base64"), {stream: true}));
      p.feed(dec.decode());
      out.ids.push(p.id);
    }
    return out;
  });
}

function bundle(spec) {
  const log = [];
  let now = 0, seq = 0, timers = [];
  const page = new URL(spec.page || "http://app.test/page");
  const win = {
    location: {href: page.href, protocol: page.protocol, host: page.host},
    setTimeout(fn, ms) { timers.push({id: ++seq, at: now + (ms || 0), fn}); return seq; },
    clearTimeout(id) { timers = timers.filter((t) => t.id !== id); },
  };
  win.window = win;
  const scripts = [];
  const head = {
    firstChild: null,
    insertBefore(s) { s.parentNode = head; scripts.push(s); },
    removeChild(s) { s.parentNode = null; },
  };
  win.document = {
    documentElement: head,
    getElementsByTagName: () => [head],
    createElement(tag) {
      const el = {tagName: tag};
      if (tag === "a") {
        let href = "";
        Object.defineProperty(el, "href", {get: () => href, set: (v) => { href = new URL(v, page).href; }});
      }
      return el;
    },
  };
  const xhrs = [];
  if (spec.xhr !== false) {
    win.XMLHttpRequest = function () {
      this.readyState = 0; this.status = 0; this.responseText = ""; this.headers = {};
      this.withCredentials = false;
    };
    Object.assign(win.XMLHttpRequest.prototype, {
      open(method, url) { this.url = url; this.readyState = 1; },
      setRequestHeader(k, v) { this.headers[k] = v; },
      getResponseHeader(k) { return k.toLowerCase() === "content-type" ? this.contentType : null; },
      overrideMimeType() {},
      send() { xhrs.push(this); log.push(["req", now, this.url, this.headers["Last-Event-ID"] || null]); },
      abort() { this.aborted = true; },
    });
  }
  if (spec.nativeEventSource) win.EventSource = function NativeEventSource() {};
  // window.JSON is absent unless asked for, as in IE6/7 and IE8 in quirks mode.
  if (spec.json) win.JSON = JSON;
  const before = Object.keys(win);
  const ctx = vm.createContext(win);
  vm.runInContext("Math.random = function () { return " + (spec.random ?? 0.5) + "; };", ctx);
  vm.runInContext(code, ctx);
  const added = Object.keys(win).filter((k) => !before.includes(k));
  let es;
  const last = () => xhrs[xhrs.length - 1];
  const fire = (x) => { x.onreadystatechange && x.onreadystatechange(); x.onprogress && x.onprogress(); };
  function tick(ms) {
    const end = now + ms;
    for (;;) {
      timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const t = timers[0];
      if (!t || t.at > end) break;
      timers.shift();
      now = t.at;
      try { t.fn(); } catch (e) { log.push(["uncaught", now, String(e)]); }
    }
    now = end;
  }
  let tokenDone = null;  // the token function's callback, until the "token" action calls it
  const actions = {
    open(url, options) {
      if (options && options.token === true) {
        options.token = (done) => { log.push(["asked", now]); tokenDone = done; };
      }
      es = new win.SSEGateway.EventSource(url, options);
      for (const type of ["open", "message", "error"].concat(spec.types || [])) {
        es.addEventListener(type, (e) => log.push(
          ["ev", now, e.type, e.data ?? null, e.lastEventId ?? null, es.readyState]));
      }
    },
    tick,
    head(status, contentType) {
      const x = last();
      x.readyState = 2; x.status = status; x.contentType = contentType ?? "text/event-stream";
      fire(x);
    },
    body(text) { const x = last(); x.readyState = 3; x.responseText += text; fire(x); },
    end() { const x = last(); x.readyState = 4; fire(x); },
    fail() { const x = last(); x.readyState = 4; x.status = 0; x.responseText = ""; fire(x); },
    respond(status, text) {
      const x = last(); x.readyState = 4; x.status = status; x.responseText = text; fire(x);
    },
    jsonp(response) {
      const s = scripts[scripts.length - 1];
      const name = decodeURIComponent(/[?&]callback=([^&]*)/.exec(s.src)[1]);
      log.push(["script", now, s.src]);
      name.split(".").reduce((o, k) => o[k], win)(response);
      s.onload && s.onload();
    },
    token(value) { const done = tokenDone; tokenDone = null; done(value); },
    close() { es.close(); },
    state() { log.push(["state", now, es.readyState, es.url]); },
    callbacks() { log.push(["callbacks", now, Object.keys(win).filter((k) => k.startsWith("__sseg_cb_"))]); },
    probe(name) { log.push(["probe", now, win[name] ?? null]); },
  };
  for (const [name, ...args] of spec.actions || []) actions[name](...args);
  return {added, log, aborted: xhrs.filter((x) => x.aborted).length,
          eventSourceIsOurs: win.EventSource === (win.SSEGateway && win.SSEGateway.EventSource)};
}

process.stdout.write(JSON.stringify(mode === "parser" ? parse(input) : bundle(input)));
"""


def run_node(mode: str, script: Path, payload: Any) -> Any:
    if NODE is None:
        pytest.skip("node is not installed")
    proc = subprocess.run(
        [NODE, "-e", HARNESS, mode, str(script)],
        input=json.dumps(payload).encode(),
        capture_output=True,
        timeout=60,
        check=False,
        preexec_fn=die_with_parent(),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def parse_responses(*responses: list[bytes]) -> dict[str, Any]:
    """Feeds each response (a list of byte chunks) to one parser, as successive connections."""
    return parse_many([list(responses)])[0]


def parse_many(cases: list[list[list[bytes]]]) -> list[dict[str, Any]]:
    encoded = [[[base64.b64encode(c).decode() for c in chunks] for chunks in case] for case in cases]
    return run_node("parser", STATIC_JS / "src" / "parser.js", encoded)


def events(*chunks: bytes) -> list[list[str]]:
    return parse_responses(list(chunks))["events"]


# --- the parser: WHATWG "interpret an event stream" ------------------------------------------


def test_data_lines_join_with_lf_and_type_defaults_to_message():
    assert events(b"data: a\ndata: b\n\nevent: add\ndata: c\n\n") == [
        ["message", "a\nb", ""], ["add", "c", ""]]


def test_cr_lf_and_crlf_all_end_lines():
    assert events(b"data: a\rdata: b\r\ndata: c\n\r\n") == [["message", "a\nb\nc", ""]]


def test_crlf_split_across_chunks_is_one_line_end():
    # The CR ends one chunk and the LF starts the next: one line end, not a blank line between.
    assert events(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [["message", "a\nb", ""]]


def test_lf_after_a_cr_that_ended_a_line_mid_chunk_is_not_swallowed_later():
    assert events(b"data: a\rx", b"\n\n") == [["message", "a", ""]]


def test_line_split_anywhere_including_inside_utf8_gives_the_same_events():
    stream = (b"\xef\xbb\xbfretry: 250\r\nid: 7\r\nevent: caf\xc3\xa9\r\ndata: \xe2\x82\xac1\r\r"
              b": keepalive\n\ndata:two\ndata\n\nid\n\n")
    whole = parse_responses([stream])
    assert whole["events"] == [["caf\u00e9", "\u20ac1", "7"], ["message", "two\n", "7"]]
    assert whole["retries"] == [250]
    splits = parse_many([[[stream[:i], stream[i:]]] for i in range(1, len(stream))])
    assert all(result == whole for result in splits)
    one_byte_chunks = parse_many([[[bytes([b]) for b in stream]]])[0]
    assert one_byte_chunks == whole


def test_one_leading_bom_is_ignored_and_a_second_one_is_not():
    # The decoder removes the first BOM; the parser must not remove another.
    assert events(b"\xef\xbb\xbfdata: x\n\n") == [["message", "x", ""]]
    # BOM split from the rest of the stream.
    assert events(b"\xef\xbb", b"\xbfdata: y\n\n") == [["message", "y", ""]]
    # The second BOM is part of the field name "\ufeffdata", an unknown field.
    assert events(b"\xef\xbb\xbf\xef\xbb\xbfdata: z\n\n") == []
    assert events(b"\xef\xbb\xbf", b"\xef\xbb\xbfdata: z\n\ndata: w\n\n") == [["message", "w", ""]]
    # A BOM after the start of the stream is data.
    assert events(b"data: a\n\n", b"\xef\xbb\xbfdata: b\n\n") == [["message", "a", ""]]


def test_comments_and_unknown_fields_are_ignored():
    assert events(b": hello\n:\nfoo: bar\ndata: x\n\n") == [["message", "x", ""]]


def test_field_without_colon_has_empty_value():
    # "data" alone appends an empty line; "event" alone resets the type to "message".
    assert events(b"data\ndata\n\n", b"event\ndata: y\n\n") == [
        ["message", "\n", ""], ["message", "y", ""]]


def test_only_one_leading_space_is_stripped_from_the_value():
    assert events(b"data:  two\ndata:none\ndata: \n\n") == [["message", " two\nnone\n", ""]]


def test_empty_data_buffer_dispatches_nothing_but_still_sets_last_event_id():
    result = parse_responses([b"id: 5\n\nevent: x\n\ndata: y\n\n"])
    assert result["events"] == [["message", "y", "5"]]


def test_empty_data_field_dispatches_an_empty_string():
    assert events(b"data:\n\n") == [["message", "", ""]]


def test_id_containing_nul_is_ignored():
    assert events(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [
        ["message", "a", "1"], ["message", "b", "1"]]


def test_empty_id_field_resets_the_last_event_id():
    assert events(b"id: 1\ndata: a\n\nid\ndata: b\n\n") == [
        ["message", "a", "1"], ["message", "b", ""]]


def test_retry_is_taken_only_when_all_ascii_digits():
    stream = (b"retry: 1500\nretry: 15x\nretry: -1\nretry: 1.5\nretry:\n"
              b"retry:  20\nretry: \xd9\xa3\nretry:007\n\n")
    result = parse_responses([stream])
    assert result["retries"] == [1500, 7]


def test_unfinished_event_at_end_of_response_is_discarded():
    result = parse_responses([b"data: a\n\ndata: lost\nid: 9\nevent: x"], [b"data: b\n\n"])
    assert result["events"] == [["message", "a", ""], ["message", "b", ""]]
    # The id of the discarded event never became the last event ID.
    assert result["ids"] == ["", ""]


def test_unfinished_line_at_end_of_response_does_not_join_the_next_response():
    # "tial" starts the next response: a field of that name, not the end of "data: par".
    result = parse_responses([b"data: a\n\ndata: par"], [b"tial\n\ndata: b\n\n"])
    assert result["events"] == [["message", "a", ""], ["message", "b", ""]]


def test_last_event_id_survives_a_reconnect_like_browsers():
    result = parse_responses([b"id: 3\ndata: a\n\n"], [b"retry: 10\n\ndata: b\n\n"])
    assert result["events"] == [["message", "a", "3"], ["message", "b", "3"]]
    assert result["ids"] == ["3", "3"]


# --- the bundle ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT))
    try:
        from gateway import assets
    finally:
        sys.path.remove(str(ROOT))
    return assets.build_assets(tmp_path_factory.mktemp("assets"))


def run_bundle(bundle_path: Path, actions: list[list], **spec: Any) -> dict[str, Any]:
    spec["actions"] = actions
    return run_node("bundle", bundle_path, spec)


def only(log: list[list], kind: str) -> list[list]:
    return [entry[1:] for entry in log if entry[0] == kind]


STREAM = "/events/chat"
PREAMBLE = ":" + " " * 2048 + "\nretry: 1000\n: hi\n\n"


def test_load_bundle_is_minified_and_carries_etag_and_digest():
    sys.path.insert(0, str(ROOT))
    try:
        from gateway import assets
    finally:
        sys.path.remove(str(ROOT))
    built = assets.load_bundle()
    joined = sum(p.stat().st_size for p in assets.source_paths())
    assert 0 < len(built.body) < joined * 0.7
    assert b"\n\n" not in built.body and b"/*" not in built.body
    assert len(built.gzipped) < 4611  # the budget: 4,611 bytes gzipped, sharing and tokens included
    assert built.etag.startswith('"') and built.etag.endswith('"') and built.digest in built.etag
    assert len(built.digest) >= 8 and int(built.digest, 16) >= 0


def test_bundle_adds_only_eventsource_and_ssegateway_to_window(bundle_path):
    result = run_bundle(bundle_path, [])
    assert sorted(result["added"]) == ["EventSource", "SSEGateway"]
    assert result["eventSourceIsOurs"]


def test_bundle_leaves_a_native_eventsource_alone(bundle_path):
    result = run_bundle(bundle_path, [], nativeEventSource=True)
    assert result["added"] == ["SSEGateway"]
    assert not result["eventSourceIsOurs"]


def test_stream_opens_dispatches_and_sends_last_event_id_as_header_on_same_origin(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM], ["tick", 0], ["head", 200], ["body", PREAMBLE],
        ["body", "id: 1\ndata: a\n\nevent: gateway-reset\ndata: {}\n\n"],
        ["end"], ["tick", 1500], ["state"],
    ], types=["gateway-reset"])["log"]
    requests = only(log, "req")
    assert requests[0] == [0, "http://app.test/events/chat?transport=stream", None]
    assert only(log, "ev")[:3] == [
        [0, "open", None, None, 1], [0, "message", "a", "1", 1], [0, "gateway-reset", "{}", "1", 1]]
    # A clean end that is no rotation: error, CONNECTING, then the retry time (1000 ms, no jitter
    # after a good connection) before reconnecting with the last id in query and header.
    assert only(log, "ev")[3] == [0, "error", None, None, 0]
    assert requests[1] == [1000, "http://app.test/events/chat?transport=stream&lastEventId=1", "1"]


def test_rotation_reconnects_at_once_silently_with_last_id_in_query(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", "http://app.test/events?channel=a&channel=b&lastEventId=old#x"], ["tick", 0],
        ["head", 200], ["body", PREAMBLE + "id: 41\ndata: a\n\n: rotate\n\n"], ["end"],
        ["tick", 0], ["head", 200], ["body", PREAMBLE + "id: 42\ndata: b\n\n"], ["state"],
    ])["log"]
    assert [r[:2] for r in only(log, "req")] == [
        [0, "http://app.test/events?channel=a&channel=b&lastEventId=old&transport=stream"],
        [0, "http://app.test/events?channel=a&channel=b&transport=stream&lastEventId=41"]]
    assert [e[1] for e in only(log, "ev")] == ["open", "message", "message"]
    assert only(log, "state")[0][1] == 1


def test_cross_origin_stream_carries_last_id_only_in_query(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", "http://push.test/events/chat", {"lastEventIdParam": "evs_last_event_id"}],
        ["tick", 0], ["head", 200], ["body", PREAMBLE + "id: a b\ndata: x\n\n: rotate\n\n"],
        ["end"], ["tick", 0],
    ])["log"]
    assert only(log, "req")[1] == [
        0, "http://push.test/events/chat?transport=stream&evs_last_event_id=a%20b", None]


def test_204_closes_for_good(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM], ["tick", 0], ["head", 204, ""], ["end"], ["tick", 600000], ["state"],
    ])["log"]
    assert len(only(log, "req")) == 1
    assert only(log, "ev") == [[0, "error", None, None, 2]]


def test_wrong_content_type_fails_the_connection(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM], ["tick", 0], ["head", 200, "text/html"], ["tick", 600000],
    ])["log"]
    assert len(only(log, "req")) == 1 and only(log, "ev") == [[0, "error", None, None, 2]]


def test_network_errors_back_off_exponentially_with_a_cap_and_reset_after_success(bundle_path):
    # Forced: an automatic stream would take a request left unanswered for 5 s for a buffering
    # proxy and long-poll.
    actions: list[list] = [["open", STREAM, {"heartbeatTimeout": 10**9, "transport": "xhr-stream"}],
                           ["tick", 0]]
    for _ in range(8):
        actions += [["fail"], ["tick", 100000]]
    actions += [["head", 200], ["body", PREAMBLE], ["fail"], ["tick", 100000]]
    log = run_bundle(bundle_path, actions, random=0.5)["log"]
    errors = [e[0] for e in only(log, "ev") if e[1] == "error"]
    requests = [r[0] for r in only(log, "req")]
    delays = [r - e for e, r in zip(errors, requests[1:])]
    # Default retry 3000 ms doubling, capped at 30 s, with jitter (a quarter here) from the second
    # failure in a row; after a success, exactly the stream's retry (1000).
    assert delays == [3000, 7500, 15000, 30000, 37500, 37500, 37500, 37500, 1000]


@pytest.mark.parametrize("status", [500, 503, 301, 404])
def test_a_stream_status_other_than_200_fails_the_connection(bundle_path, status):
    log = run_bundle(bundle_path, [
        ["open", STREAM], ["tick", 0], ["head", status, "text/html"], ["tick", 600000],
    ])["log"]
    assert len(only(log, "req")) == 1
    assert only(log, "ev") == [[0, "error", None, None, 2]]


def test_retry_zero_still_backs_off_from_half_a_second(bundle_path):
    actions: list[list] = [["open", STREAM, {"transport": "xhr-stream"}], ["tick", 0],
                           ["head", 200], ["body", "retry: 0\n"], ["fail"]]
    for _ in range(3):
        actions += [["tick", 10000], ["fail"]]
    actions += [["tick", 10000]]
    log = run_bundle(bundle_path, actions, random=0)["log"]
    errors = [e[0] for e in only(log, "ev") if e[1] == "error"]
    requests = [r[0] for r in only(log, "req")]
    assert [r - e for e, r in zip(errors, requests[1:])] == [500, 1000, 2000, 4000]


def test_heartbeat_timeout_forces_a_reconnect(bundle_path):
    result = run_bundle(bundle_path, [
        ["open", STREAM, {"heartbeatTimeout": 5000}], ["tick", 0], ["head", 200],
        ["body", PREAMBLE], ["tick", 4000], ["body", ": keepalive\n"], ["tick", 4999],
        ["state"], ["tick", 1], ["tick", 1500],
    ])
    log = result["log"]
    assert only(log, "state")[0][1] == 1
    assert only(log, "ev")[1] == [9000, "error", None, None, 0]
    assert [r[0] for r in only(log, "req")] == [0, 10000]
    assert result["aborted"] >= 1


def test_close_in_a_listener_stops_dispatch_and_reconnection(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM], ["tick", 0], ["head", 200], ["body", "data: a\n\n"], ["close"],
        ["body", "data: b\n\n"], ["end"], ["tick", 600000], ["state"],
    ])["log"]
    assert [e[1] for e in only(log, "ev")] == ["open", "message"]
    assert len(only(log, "req")) == 1 and only(log, "state")[0][1] == 2


def test_xhr_poll_uses_the_poll_url_and_polls_again_at_once_with_the_cursor(bundle_path):
    answer = {"events": [{"id": "7", "event": "message", "data": "x"},
                         {"id": "8", "event": "note", "data": "y"}],
              "lastEventId": "8", "retry": 2000}
    log = run_bundle(bundle_path, [
        ["open", STREAM, {"transport": "xhr-poll"}], ["tick", 0],
        ["respond", 200, "\n" + json.dumps(answer)], ["tick", 0],
        ["respond", 200, json.dumps({"events": [], "lastEventId": "9"})], ["tick", 0],
        ["respond", 502, ""], ["tick", 3000],
    ], types=["note"])["log"]
    urls = [r[1] for r in only(log, "req")]
    # The first poll of a connection is answered at once (timeout=0), so "open" does not wait.
    assert urls[0].startswith("http://app.test/poll/chat?timeout=0&_=")
    assert urls[1].startswith("http://app.test/poll/chat?lastEventId=8&_=")
    assert urls[2].startswith("http://app.test/poll/chat?lastEventId=9&_=")
    assert urls[3].startswith("http://app.test/poll/chat?lastEventId=9&timeout=0&_=")
    # A 502 to a long-poll is retried: after the answer's retry (2000 ms), with no jitter after
    # good answers.
    assert [r[0] for r in only(log, "req")] == [0, 0, 0, 2000]
    assert only(log, "ev") == [[0, "open", None, None, 1], [0, "message", "x", "7", 1],
                               [0, "note", "y", "8", 1], [0, "error", None, None, 0]]


@pytest.mark.parametrize("stream_url, poll_url", [
    ("http://events/events/events?channel=a#f", "http://events/poll/events?channel=a&timeout=0&_="),
    ("/gw/events-v2/events", "http://app.test/gw/events-v2/poll?timeout=0&_="),
])
def test_poll_url_turns_only_the_first_events_path_segment_into_poll(
        bundle_path, stream_url, poll_url):
    log = run_bundle(bundle_path, [["open", stream_url, {"transport": "xhr-poll"}], ["tick", 0]])
    assert only(log["log"], "req")[0][1].startswith(poll_url)


@pytest.mark.parametrize("native_json", [True, False])
def test_poll_answer_that_is_not_plain_json_is_an_error_and_never_runs(bundle_path, native_json):
    log = run_bundle(bundle_path, [
        ["open", STREAM, {"transport": "xhr-poll"}], ["tick", 0],
        ["respond", 200, '{"events": [], "lastEventId": (window.pwned = "yes")}'],
        ["probe", "pwned"], ["tick", 4500],
    ], json=native_json)["log"]
    assert only(log, "probe") == [[0, None]]
    assert only(log, "ev") == [[0, "error", None, None, 0]]
    assert [r[0] for r in only(log, "req")] == [0, 3000]


def test_ie_status_1223_counts_as_204_and_closes(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, {"transport": "xhr-poll"}], ["tick", 0], ["respond", 1223, ""],
        ["tick", 600000],
    ])["log"]
    assert len(only(log, "req")) == 1 and only(log, "ev") == [[0, "error", None, None, 2]]


def test_jsonp_poll_calls_back_through_a_plain_global_and_removes_it(bundle_path):
    answer = {"events": [{"id": "1", "event": "message", "data": "hi"}], "lastEventId": "1"}
    log = run_bundle(bundle_path, [
        ["open", "http://push.test/events/chat"], ["tick", 0], ["jsonp", answer],
        ["callbacks"], ["tick", 0], ["jsonp", {"events": [], "lastEventId": "2"}],
    ], xhr=False)["log"]
    scripts = [s[1] for s in only(log, "script")]
    # A plain identifier, as the gateway requires: no dotted path.
    assert re.match(r"http://push\.test/poll/chat\?timeout=0&callback=__sseg_cb_[0-9a-z]+$",
                    scripts[0]), scripts[0]
    assert "lastEventId=1&callback=__sseg_cb_" in scripts[1]
    assert only(log, "callbacks")[0][1] == []
    assert only(log, "ev")[:2] == [[0, "open", None, None, 1], [0, "message", "hi", "1", 1]]


def test_npm_lint_passes_on_sources_and_built_bundle():
    if NODE is None:
        pytest.skip("node is not installed")
    npm = shutil.which("npm")
    assert npm is not None, "node is installed but npm is not (Debian: apt-get install npm)"
    env = dict(os.environ, PYTHON=sys.executable)
    if not (STATIC_JS / "node_modules").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=STATIC_JS, env=env,
                       check=True, capture_output=True, timeout=300,
                       preexec_fn=die_with_parent())
    proc = subprocess.run([npm, "run", "lint"], cwd=STATIC_JS, env=env,
                          capture_output=True, timeout=300, check=False,
                          preexec_fn=die_with_parent())
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def test_mangling_renames_a_catch_variable_that_ie8_would_leak_onto_a_used_name():
    sys.path.insert(0, str(ROOT))
    try:
        from gateway import assets
    finally:
        sys.path.remove(str(ROOT))
    # IE8 puts `b` of catch (b) in f's scope: it would overwrite f's own b, and the outer b
    # that the inner function reads. Elsewhere the catch variable is left alone.
    assert assets.ie8_safe("function f(a){var b=1;try{x()}catch(b){g(b,{b:b},q.b)}return b}") == (
        "function f(a){var b=1;try{x();}catch($0){g($0,{b:$0},q.b);}return b;}")
    assert assets.ie8_safe("var b;function f(){try{x()}catch(b){g(b)}return function(){return b}}") == (
        "var b;function f(){try{x();}catch($0){g($0);}return function(){return b;};}")
    assert assets.ie8_safe("function f(a){try{x()}catch(b){g(b)}return a}") == (
        "function f(a){try{x();}catch(b){g(b);}return a;}")
    # The built bundle's local names are shortened.
    assert b"function xhrRequest" not in assets.load_bundle().body


def test_an_automatic_stream_that_shows_no_byte_for_5_s_goes_on_by_long_polling(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM], ["tick", 0], ["head", 200], ["body", PREAMBLE + "id: 7\ndata: a\n\n"],
        ["end"], ["tick", 1000], ["head", 200], ["tick", 4999], ["state"], ["tick", 1],
        ["respond", 200, json.dumps({"events": [], "lastEventId": "7"})], ["tick", 0],
    ])["log"]
    urls = [r[1] for r in only(log, "req")]
    assert urls[:2] == ["http://app.test/events/chat?transport=stream",
                        "http://app.test/events/chat?transport=stream&lastEventId=7"]
    # The second stream opens, then shows nothing of its body for 5 s: the connection goes on
    # by polling from id 7, silently (no error, no second open for it).
    assert urls[2].startswith("http://app.test/poll/chat?lastEventId=7&")
    assert urls[3].startswith("http://app.test/poll/chat?lastEventId=7&")
    assert [e[1:3] for e in only(log, "ev")] == [
        ["open", None], ["message", "a"], ["error", None], ["open", None]]
    assert only(log, "state")[0][1] == 1


# --- private channels: the token function, refusals, the expiry --------------------------------

REFUSED = 'event: gateway-refused\ndata: {"error":"unauthorized","status":401}\n\n'
EXPIRED = 'event: gateway-auth-expired\ndata: {"channels":["chat"],"reason":"expired"}\n\n'
TOKEN_STREAM = {"transport": "xhr-stream", "token": True}


def test_the_token_function_is_asked_before_connecting_and_after_a_failure_not_for_a_rotation(
        bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, TOKEN_STREAM], ["tick", 0], ["state"], ["token", "t1"],
        ["head", 200], ["body", PREAMBLE + "id: 1\ndata: a\n\n: rotate\n\n"], ["end"],
        ["tick", 0], ["head", 200], ["body", PREAMBLE], ["fail"], ["tick", 1000],
        ["token", "t2"],
    ])["log"]
    assert [a[0] for a in only(log, "asked")] == [0, 1000]
    assert [r[1] for r in only(log, "req")] == [
        "http://app.test/events/chat?transport=stream&token=t1",
        "http://app.test/events/chat?transport=stream&lastEventId=1&token=t1",
        "http://app.test/events/chat?transport=stream&lastEventId=1&token=t2"]
    assert only(log, "state")[0][1] == 0  # connecting while the token is fetched
    assert [e[1] for e in only(log, "ev")] == ["open", "message", "error"]


def test_the_expiry_event_renews_the_token_and_resumes_at_once_from_the_last_id(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, TOKEN_STREAM], ["tick", 0], ["token", "t1"], ["head", 200],
        ["body", PREAMBLE + "id: 5\ndata: a\n\n" + EXPIRED], ["end"], ["tick", 0],
        ["token", "t2"], ["head", 200], ["body", PREAMBLE + "id: 6\ndata: b\n\n"], ["state"],
    ], types=["gateway-auth-expired"])["log"]
    assert [r[1] for r in only(log, "req")][1] == (
        "http://app.test/events/chat?transport=stream&lastEventId=5&token=t2")
    # Silent: no error, no second open; the page sees the expiry event itself.
    assert [e[1:4] for e in only(log, "ev")] == [
        ["open", None, None], ["message", "a", "5"],
        ["gateway-auth-expired", '{"channels":["chat"],"reason":"expired"}', "5"],
        ["message", "b", "6"]]
    assert only(log, "state")[0][1] == 1


def test_a_refused_reused_token_is_renewed_once_and_a_refused_fresh_one_is_final(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, TOKEN_STREAM], ["tick", 0], ["token", "t1"], ["head", 200],
        ["body", PREAMBLE + ": rotate\n\n"], ["end"], ["tick", 0],
        # The rotated stream's token expired in between: refused, renewed, asked again.
        ["head", 200], ["body", REFUSED], ["tick", 0], ["token", "t2"],
        ["head", 200], ["body", REFUSED], ["tick", 600000], ["state"],
    ], types=["gateway-refused"])["log"]
    assert [r[1].rsplit("=", 1)[1] for r in only(log, "req")] == ["t1", "t1", "t2"]
    assert len(only(log, "asked")) == 2
    # The refusal is no event for the page: an error, and the source is closed.
    assert [e[1:] for e in only(log, "ev")] == [["open", None, None, 1], ["error", None, None, 2]]
    assert only(log, "state")[0][1] == 2


@pytest.mark.parametrize("transport, answer", [
    ("xhr-stream", [["head", 200], ["body", REFUSED]]),
    ("xhr-poll", [["respond", 401, '{"error":"unauthorized","detail":"x","channel":"chat"}']]),
    ("xhr-poll", [["respond", 403, '{"error":"forbidden","detail":"x","channel":"chat"}']]),
    ("jsonp-poll", [["jsonp", {"error": "unauthorized", "detail": "x", "status": 401}]]),
])
def test_a_refusal_without_a_token_function_fails_the_connection_for_good(
        bundle_path, transport, answer):
    result = run_bundle(bundle_path, [
        ["open", "http://push.test/events/chat" if transport == "jsonp-poll" else STREAM,
         {"transport": transport}], ["tick", 0], *answer, ["tick", 600000], ["state"],
        ["callbacks"],
    ], json=True)
    log = result["log"]
    requests = only(log, "req") + only(log, "script")
    assert len(requests) == 1, requests
    events = [e[1] for e in only(log, "ev")]
    # A long-poll's refusal comes before any open; the padded stream's head came first.
    assert events == (["open", "error"] if transport == "xhr-stream" else ["error"])
    assert only(log, "ev")[-1][-1] == 2 and only(log, "state")[0][1] == 2
    assert only(log, "callbacks")[0][1] == []


def test_a_long_poll_answer_with_the_expiry_event_renews_the_token(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, {"transport": "xhr-poll", "token": True}], ["tick", 0], ["token", "t1"],
        ["respond", 200, json.dumps({"events": [{"event": "gateway-auth-expired", "data": "{}"}],
                                     "lastEventId": "4"})], ["tick", 0], ["token", "t2"],
    ], json=True)["log"]
    urls = [r[1] for r in only(log, "req")]
    assert "token=t1" in urls[0] and "lastEventId=4" in urls[1] and "token=t2" in urls[1]


def test_a_token_function_with_no_token_fails_the_attempt_and_is_asked_again(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, TOKEN_STREAM], ["tick", 0], ["token", None], ["state"],
        ["tick", 3000], ["token", "t"],
    ])["log"]
    assert [a[0] for a in only(log, "asked")] == [0, 3000]
    assert only(log, "ev") == [[0, "error", None, None, 0]]
    assert [r[0] for r in only(log, "req")] == [3000]


def test_a_token_that_comes_after_close_sends_nothing(bundle_path):
    log = run_bundle(bundle_path, [
        ["open", STREAM, TOKEN_STREAM], ["tick", 0], ["close"], ["token", "late"],
        ["tick", 600000],
    ])["log"]
    assert only(log, "req") == [] and only(log, "ev") == []
