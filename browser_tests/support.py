"""Helpers of the browser suite: gateways on a chosen port, the second origin's page server,
and the harness page driver. The fixtures that use them are in conftest.py.

The process helpers of tests/conftest.py are imported from that file under another module name
(`sse_gateway_tests_conftest`): both directories have a conftest.py, and pytest registers each
as the module `conftest`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence
from urllib.parse import parse_qs, quote, urlsplit

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAGES = HERE / "pages"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SETUP_HINT = "run the README's test command (bash tests/run.sh), which installs it"


def _load_process_fixtures():
    name = "sse_gateway_tests_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


process_fixtures = _load_process_fixtures()
Gateway = process_fixtures.Gateway
free_port = process_fixtures.free_port
wait_until = process_fixtures.wait_until
die_with_parent = process_fixtures.die_with_parent

#: Every way a page can receive events: the browser's own EventSource, then the polyfill forced
#: onto each of its transports (xdr-stream through pages/xdr_shim.js: Chromium has no XDR).
TRANSPORTS = ["native", "xhr-stream", "xdr-stream", "xhr-poll", "jsonp-poll"]
POLYFILL_TRANSPORTS = TRANSPORTS[1:]
SHIMS_FOR = {"xdr-stream": ("xdr_shim",)}


# -- gateways on a chosen port ----------------------------------------------------------------


class PinnedGateway(Gateway):
    """`sse-gateway serve` on a given port, so that a restarted gateway keeps the pages' URLs."""

    def __init__(self, port: int, args: Sequence[str], env: Optional[Dict[str, str]] = None):
        self.port = port
        self.args = list(args)
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = tempfile.mktemp(prefix="sse-gateway-browser-", suffix=".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), *self.args],
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(),
        )
        try:
            wait_until(self._healthy, 15, message=f"the gateway on {self.url} to be healthy")
        except BaseException:
            self.cleanup()
            raise

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=5).json()


class FastPublisher:
    """Publishes over HTTP on one keep-alive connection (a burst of 1,000 takes about a second)."""

    def __init__(self, gateway_url: str) -> None:
        self.url = gateway_url
        self.session = requests.Session()

    def publish(self, channel: str, data, **fields) -> str:
        response = self.session.post(f"{self.url}/publish/{channel}",
                                     json={"data": data, **fields}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def close(self) -> None:
        self.session.close()


# -- the second origin ------------------------------------------------------------------------


#: Scripted endpoints, `/<name>/<key>/...` (e.g. `/gone/k1/events/x`, and for long-poll
#: transports `/gone/k1/poll/x`): the first request of each key gets the first answer named here
#: (see ANSWERS), every later one the second: a status with an empty body and
#: `Access-Control-Allow-Origin: *` as the gateway would send, "drop" (the connection closed with
#: no answer: a network error), or an answer again.
SCRIPTED = {
    "flaky": ("good", 503),
    "gone": ("good", 204),
    "broken": ("good", "drop"),
    # A stream with one complete event (id 1) and one cut off before its blank line (id 2).
    "partial": ("partial", 204),
    # A stream that starts with two byte order marks.
    "bom": ("bom", 204),
    # An event whose id is outside Latin-1.
    "unicode-id": ("unicode-id", 204),
    # A good answer that sets a 1 s retry, every time.
    "steady": ("slow-retry", "slow-retry"),
}

UNICODE_ID = "ünï😀"

#: The answers: a stream body that ends, and what a long-poll answers instead.
ANSWERS = {
    "good": (b"retry: 100\n: ok\n\n", {"events": [], "lastEventId": "", "retry": 100}),
    "partial": (b"retry: 100\n: ok\n\nid: 1\ndata: complete\n\nid: 2\ndata: unfinished\n",
                {"events": [{"id": "1", "data": "complete"}], "lastEventId": "1", "retry": 100}),
    "bom": ("\ufeff\ufeffdata: hidden\n\ndata: shown\n\nretry: 100\n\n".encode(), None),
    "unicode-id": (f"retry: 100\nid: {UNICODE_ID}\ndata: one\n\n".encode(),
                   {"events": [{"id": UNICODE_ID, "data": "one"}], "lastEventId": UNICODE_ID,
                    "retry": 100}),
    "slow-retry": (b"retry: 1000\n: ok\n\n", {"events": [], "lastEventId": "", "retry": 1000}),
}


@dataclass
class Hit:
    """One request the page server answered."""

    at: float  # time.monotonic() on arrival
    path: str  # with the query string
    status: int
    kind: str  # "page", "stream-end", "poll", "drop", "preflight", or an empty answer's status ("503")
    headers: Dict[str, str] = field(default_factory=dict)


class PageServer:
    """Serves browser_tests/pages/ as another origin than the gateway's, plus scripted endpoints
    for the failure cases (see SCRIPTED). Every request is recorded in `hits`."""

    def __init__(self) -> None:
        self.hits: List[Hit] = []
        self._lock = threading.Lock()
        self._keys_seen: set = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner._handle(self)

            def do_OPTIONS(self) -> None:  # noqa: N802 (a CORS preflight: recorded, refused)
                owner._record(self, 405, "preflight")
                owner._send(self, 405, b"", {})

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    def hits_under(self, prefix: str) -> List[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path.startswith(prefix)]

    def _record(self, request: BaseHTTPRequestHandler, status: int, kind: str) -> None:
        hit = Hit(time.monotonic(), request.path, status, kind,
                  {k.lower(): v for k, v in request.headers.items()})
        with self._lock:
            self.hits.append(hit)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        parts = url.path.split("/")
        if len(parts) == 3 and parts[1] == "pages" and (PAGES / parts[2]).is_file():
            name = parts[2]
            body = (PAGES / name).read_bytes()
            kind = "text/html" if name.endswith(".html") else "application/javascript"
            self._record(request, 200, "page")
            self._send(request, 200, body, {"Content-Type": kind + "; charset=utf-8"})
        elif len(parts) > 2 and parts[1] in SCRIPTED:
            first_answer, later = SCRIPTED[parts[1]]
            with self._lock:
                first = parts[2] not in self._keys_seen
                self._keys_seen.add(parts[2])
            if first or later in ANSWERS:
                self._answer_well(request, url, first_answer if first else later)
            elif later == "drop":
                self._record(request, 0, "drop")
                request.close_connection = True
            else:
                self._record(request, later, str(later))
                self._send(request, later, b"", {"Access-Control-Allow-Origin": "*"})
        else:
            self._record(request, 404, "404")
            self._send(request, 404, b"not found", {"Content-Type": "text/plain"})

    def _answer_well(self, request: BaseHTTPRequestHandler, url, answer: str) -> None:
        """A good answer of ANSWERS: an event stream that ends, or a long-poll answer (JSON, or
        JSONP with a `callback`)."""
        cors = {"Access-Control-Allow-Origin": "*"}
        stream, poll = ANSWERS[answer]
        if "/poll/" in url.path:
            self._record(request, 200, "poll")
            body = json.dumps(poll)
            callback = parse_qs(url.query).get("callback")
            if callback:
                body, ctype = f"/**/{callback[0]}({body});".encode(), "application/javascript"
            else:
                body, ctype = body.encode(), "application/json"
            self._send(request, 200, body, {**cors, "Content-Type": ctype})
        else:
            self._record(request, 200, "stream-end")
            self._send(request, 200, stream, {**cors, "Content-Type": "text/event-stream"})

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes,
              headers: Dict[str, str]) -> None:
        request.send_response(status)
        for name, value in {"Cache-Control": "no-store", **headers}.items():
            request.send_header(name, value)
        if status not in (204, 304):
            request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if status not in (204, 304):
            request.wfile.write(body)


# -- the page driver -------------------------------------------------------------------------------


class Harness:
    """One page of pages/harness.html, with every request it makes recorded in `requests`."""

    def __init__(self, page, page_server: PageServer, gateway_url: str,
                 shims: Sequence[str] = ()) -> None:
        self.page = page
        self.gateway_url = gateway_url
        self.requests: List = []
        self.answered: List = []  # requests whose response head arrived
        self.console: List[str] = []
        page.on("request", lambda request: self.requests.append(request))
        page.on("response", lambda response: self.answered.append(response.request))
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        query = f"gateway={quote(gateway_url, safe='')}&shims={','.join(shims)}"
        page.goto(f"{page_server.origin}/pages/harness.html?{query}")
        page.wait_for_function("() => !!(window.SSEGateway && window.listen)")

    def listen(self, url: str, transport: str, types: Sequence[str] = (), then: str = "",
               **options) -> None:
        """Create window.source. `then`: JavaScript run right after, in the same task, with
        `source` in scope (so that it runs before the source connects)."""
        self.page.evaluate(
            "([url, transport, options, types, then]) => { listen(url, transport, options, types);"
            " if (then) { new Function('source', then)(window.source); } }",
            [url, transport, options, list(types), then])

    def events_url(self, channel: str) -> str:
        return f"{self.gateway_url}/events/{channel}"

    def received(self) -> List[dict]:
        return self.page.evaluate("() => window.received")

    def opens(self) -> List[int]:
        return self.page.evaluate("() => window.opens")

    def errors(self) -> List[int]:
        return self.page.evaluate("() => window.errors")

    def ready_state(self) -> int:
        return self.page.evaluate("() => window.source.readyState")

    def wait(self, expression: str, arg=None, timeout: float = 20.0) -> None:
        """Wait until the JS function `expression` (called with `arg`) returns something truthy."""
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=50)
        except Exception as error:
            raise AssertionError(f"timed out after {timeout}s waiting for {expression} ({arg}); "
                                 f"received {len(self.received())} events, opens "
                                 f"{self.opens()}, errors {self.errors()}, console "
                                 f"{self.console[-5:]}") from error

    def wait_open(self, timeout: float = 20.0) -> None:
        self.wait("() => window.source && window.source.readyState == 1 && window.opens.length",
                  timeout=timeout)

    def wait_received(self, count: int, timeout: float = 20.0) -> List[dict]:
        self.wait("n => window.received.length >= n", count, timeout)
        return self.received()

    def requests_to(self, prefix: str) -> List:
        return [request for request in self.requests if request.url.startswith(prefix)]

    def wait_requests(self, prefix: str, count: int, timeout: float = 20.0,
                      where: Callable = lambda request: True) -> List:
        """Wait until the page made at least `count` requests to URLs starting with `prefix`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [request for request in self.requests_to(prefix) if where(request)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {count} requests "
                                     f"to {prefix}: {[r.url for r in found]}")
            self.page.wait_for_timeout(50)  # lets Playwright deliver the page's request events

    def observe(self, seconds: float) -> None:
        """Let the page run for a bounded time (used to show that something does NOT happen)."""
        self.page.wait_for_timeout(seconds * 1000)
