"""The nginx files users copy (nginx/), proven with a real nginx in front of real gateways.

Each nginx runs from its own temporary prefix on free ports. Its configuration is the example
nginx/nginx.conf and nginx/upstream.conf with the {{...}} placeholders filled in, plus lines
that keep its logs and temporary files inside the prefix; the other snippets are the shipped
files themselves, symlinked. A test that needs one value changed (a short read timeout, gzip
for every type, an exposed publish endpoint) changes exactly that and says why.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from child_processes import children, die_with_parent
from conftest import ROOT, Gateway, free_port, wait_until
from sse_client import Stream, StreamClosed, subscribed

from gateway import Publisher
from gateway.config import Config
from gateway.redis_schema import history_key
from gateway.wire import EventStreamParser

NGINX_DIR = Path(ROOT) / "nginx"
DOCS = Path(ROOT) / "docs" / "nginx.md"
# Snippets without placeholders: the tests use the shipped files unchanged.
SNIPPETS = ("proxy.conf", "events.conf", "poll.conf", "static.conf", "publish.conf",
            "unavailable.conf", "log.conf", "errors.conf")
SHIPPED_ACCESS_LOG = "access_log /var/log/nginx/access.log sse_gateway;"
SHIPPED_ERROR_LOG = "error_log /var/log/nginx/error.log crit;"
LOCATIONS_ERROR_LOG = "logs/locations-error.log"  # in nginx's prefix
EVENTS_READ_TIMEOUT = "proxy_read_timeout 60s;"
GZIP_TYPES = "gzip_types text/css text/plain application/json application/javascript text/javascript;"
SHORT_READ_TIMEOUT = 3  # seconds, for the tests of idle streams
ONE_YEAR = 365 * 24 * 3600

# A server block appended for the tests of forwarded clients, never to be copied: a public
# server that forwards /publish/ with no allow/deny in front, as a careless configuration would.
# Only the gateway's own rule (no token: loopback clients only) then stands in the way.
EXPOSED_PUBLISH_SERVER = """
    server {{
        {listens}
        location ^~ /publish/ {{
            proxy_pass http://sse_gateway;
            include sse-gateway/proxy.conf;
        }}
    }}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed: run the README's test command (bash tests/run.sh), "
                    "which installs the Debian package nginx")
    return found


def outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine: a client bound to it is not local."""
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("198.51.100.1", 9))  # UDP: sends nothing, only picks a source address
            candidates.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None,
                                                                  socket.AF_INET)]
    except OSError:
        pass
    for address in candidates:
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


class Nginx:
    """One nginx master (and its workers) with its own prefix, public and internal ports."""

    def __init__(self, gateway_ports: Sequence[int], *,
                 snippet_edits: dict[str, tuple[str, str]] | None = None,
                 http_edits: Sequence[tuple[str, str]] = (),
                 extra_servers: str = "") -> None:
        self.binary = nginx_binary()
        self.public_port, self.internal_port = free_port(), free_port()
        self.public_url = f"http://127.0.0.1:{self.public_port}"
        self.internal_url = f"http://127.0.0.1:{self.internal_port}"
        self.prefix = Path(tempfile.mkdtemp(prefix="sse-gateway-nginx-"))
        # nginx's workers run as an unprivileged user and create temporary files in here.
        self.prefix.chmod(0o755)
        self.conf = self.prefix / "conf" / "nginx.conf"
        self.error_log = self.prefix / "logs" / "error.log"
        self.access_log = self.prefix / "logs" / "access.log"
        self.locations_error_log = self.prefix / LOCATIONS_ERROR_LOG  # errors.conf's
        self.proc: subprocess.Popen | None = None
        self._render(list(gateway_ports), snippet_edits or {}, http_edits, extra_servers)

    def _render(self, ports: list[int], snippet_edits, http_edits, extra_servers: str) -> None:
        include_dir = self.prefix / "conf" / "sse-gateway"
        include_dir.mkdir(parents=True)
        (self.prefix / "logs").mkdir()
        (self.prefix / "tmp").mkdir()
        # The shipped access log, in the shipped format, and the error log of the event and
        # poll locations at the shipped level, moved into the prefix.
        snippet_edits = {"log.conf": (SHIPPED_ACCESS_LOG,
                                      f"access_log {self.access_log} sse_gateway;"),
                         "errors.conf": (SHIPPED_ERROR_LOG,
                                         f"error_log {LOCATIONS_ERROR_LOG} crit;"),
                         **snippet_edits}
        for name in SNIPPETS:
            shipped = NGINX_DIR / name
            if name in snippet_edits:
                old, new = snippet_edits[name]
                (include_dir / name).write_text(_replace_once(shipped.read_text(), old, new))
            else:
                (include_dir / name).symlink_to(shipped)
        # One {{GATEWAY_PORT_n}} per upstream line; with fewer gateways, they are repeated
        # (nginx takes a repeated server line as two peers of the same process).
        upstream = re.sub(r"\{\{GATEWAY_PORT_(\d+)\}\}",
                          lambda m: str(ports[(int(m.group(1)) - 1) % len(ports)]),
                          (NGINX_DIR / "upstream.conf").read_text())
        (include_dir / "upstream.conf").write_text(_filled(upstream))

        conf = (NGINX_DIR / "nginx.conf").read_text()
        conf = conf.replace("{{PUBLIC_PORT}}", str(self.public_port))
        conf = conf.replace("{{INTERNAL_PORT}}", str(self.internal_port))
        for old, new in http_edits:
            conf = _replace_once(conf, old, new)
        tmp = self.prefix / "tmp"
        environment = "\n".join([
            "http {",
            "    # Test environment: temporary files inside this nginx's own prefix.",
            *(f"    {kind}_temp_path {tmp / kind};"
              for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        ])
        conf = _replace_once(conf, "\nhttp {", "\n" + environment)
        if extra_servers:
            end = conf.rstrip().rindex("}")  # the end of the http {} block
            conf = conf[:end] + extra_servers + conf[end:]
        self.conf.write_text(_filled(conf))

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-e",
                str(self.error_log), "-g", f"daemon off; pid {self.prefix / 'nginx.pid'};",
                *extra]

    def check_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30,
                              check=False, preexec_fn=die_with_parent())

    def start(self) -> Nginx:
        # SIGTERM when pytest dies: nginx's fast shutdown, which stops its workers too.
        self.proc = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent(signal.SIGTERM))
        wait_until(self._listening, 10, message=f"nginx on {self.public_port} and "
                                                f"{self.internal_port}")
        return self

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.errors()}")
        try:
            for port in (self.public_port, self.internal_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def errors(self) -> str:
        """Both error logs: nginx's own, and that of the event and poll locations."""
        logged = []
        for path in (self.error_log, self.locations_error_log):
            try:
                logged.append(path.read_text(errors="replace"))
            except OSError:
                pass
        return "".join(logged)

    def upstream_statuses(self, path: str) -> list[str]:
        """What the access log says of the gateway processes tried for each request of `path`
        (without its query): their addresses and statuses."""
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line.partition(" upstream ")[2] for line in lines
                if f" {path} HTTP/" in line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            workers = children(self.proc.pid)
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown, open streams included
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"expected {old!r} exactly once in the shipped file"
    return text.replace(old, new)


def _filled(text: str) -> str:
    left = re.findall(r"^[^#\n]*\{\{[A-Z_0-9]+\}\}", text, flags=re.MULTILINE)
    assert not left, f"placeholders left unfilled: {left}"
    return text


@pytest.fixture
def nginx_factory():
    """Start nginx instances for one test; each is stopped and its prefix removed at the end."""
    started: list[Nginx] = []

    def start(gateway_ports: Sequence[int], **options) -> Nginx:
        proxy = Nginx(gateway_ports, **options)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.cleanup()


@pytest.fixture(scope="module")
def gateways(redis_server):
    """Two gateway processes on one Redis, trusting the local nginx, with a 1 s heartbeat."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # another module may have stopped it
    started: list[Gateway] = []
    try:
        for _ in range(2):
            started.append(Gateway(["--redis-url", redis_server.url, "--trusted-proxy",
                                    "127.0.0.1", "--heartbeat", "1"]))
        yield started
    finally:
        for gateway in started:
            gateway.cleanup()


@pytest.fixture(scope="module")
def proxy(gateways):
    """The example nginx.conf, as shipped, in front of the two gateways."""
    proxy = Nginx([g.port for g in gateways])
    try:
        yield proxy.start()
    finally:
        proxy.cleanup()


def subscribers(gateway: Gateway) -> int:
    return requests.get(gateway.url + "/healthz", timeout=5).json()["subscribers"]


def no_subscribers(gateways: Sequence[Gateway]) -> None:
    """Wait until earlier tests' connections have left the gateways."""
    wait_until(lambda: sum(subscribers(g) for g in gateways) == 0, 10,
               message="the gateways to have no subscribers left")


def publish_internal(proxy: Nginx, channel: str, data: str) -> dict:
    response = requests.post(f"{proxy.internal_url}/publish/{channel}", json={"data": data},
                             timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def open_stream(url: str, headers: dict[str, str] | None = None) -> Stream:
    """A stream whose head has arrived: it is subscribed and has its first cursor."""
    stream = Stream(url, headers)
    assert stream.status == 200, stream.status
    stream.wait_for(subscribed, 10)
    return stream


def max_age(cache_control: str) -> int | None:
    found = re.search(r"max-age=(\d+)", cache_control)
    return int(found.group(1)) if found else None


def post_from(source: str, port: int, path: str, headers: dict[str, str]):
    """POST a small JSON message to nginx from a given local address; (status, type, body)."""
    connection = http.client.HTTPConnection(source, port, timeout=10, source_address=(source, 0))
    try:
        connection.request("POST", path, body=json.dumps({"data": "x"}),
                           headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


# The configuration itself.

def test_example_config_with_the_shipped_snippets_passes_nginx_t(gateways):
    proxy = Nginx([g.port for g in gateways])
    try:
        result = proxy.check_config()
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr
    finally:
        proxy.cleanup()


def test_example_config_includes_every_shipped_snippet():
    text = "".join((NGINX_DIR / name).read_text() for name in ("nginx.conf", *SNIPPETS))
    included = set(re.findall(r"^\s*include sse-gateway/([\w.-]+);", text, flags=re.MULTILINE))
    assert included == {"upstream.conf", *SNIPPETS}


def test_shipped_read_timeouts_exceed_the_gateway_defaults():
    def read_timeout(name: str) -> int:
        found = re.search(r"^\s*proxy_read_timeout (\d+)s;", (NGINX_DIR / name).read_text(),
                          flags=re.MULTILINE)
        assert found, f"{name} sets no proxy_read_timeout"
        return int(found.group(1))

    defaults = Config()
    # Two lost heartbeats in a row must not be enough for nginx to cut a stream.
    assert read_timeout("events.conf") > 2 * defaults.heartbeat
    assert read_timeout("poll.conf") > defaults.poll_timeout


def connections_to(port: int) -> set[int]:
    """The TCP connections to a local port, in any state but listening, by their other port."""
    peers = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, remote, state = row.split()[1:4]
            local_port, remote_port = (int(a.rsplit(":", 1)[1], 16) for a in (local, remote))
            if state != "0A" and port in (local_port, remote_port):  # 0A: LISTEN
                peers.add(remote_port if local_port == port else local_port)
    return peers


def test_requests_through_nginx_reuse_keepalive_connections_to_the_gateway(start_gateway,
                                                                            nginx_factory):
    # HTTP/1.1 and an empty Connection header (proxy.conf) are what let the upstream's
    # keepalive pool work; without them nginx opens one connection per request.
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("counting connections needs Linux's /proc/net/tcp")
    gateway = start_gateway("--trusted-proxy", "127.0.0.1")
    proxy = nginx_factory([gateway.port])
    before = connections_to(gateway.port)
    with requests.Session() as client:  # one client connection: one nginx worker
        for _ in range(20):
            response = client.get(f"{proxy.public_url}/poll/keepalive?timeout=0", timeout=10)
            assert response.status_code == 200
    assert len(connections_to(gateway.port) - before) <= 2


# Delivery without buffering.

@pytest.mark.parametrize("query", ["", "?transport=stream"], ids=["native", "padded"])
def test_event_stream_through_nginx_delivers_each_event_within_a_second(proxy, query):
    channel = f"deliver-{'padded' if query else 'native'}"
    # Accept-Encoding as browsers send it: the stream must still come through uncompressed.
    with open_stream(f"{proxy.public_url}/events/{channel}{query}",
                     {"Accept-Encoding": "gzip, deflate"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in stream.headers
        assert "content-length" not in stream.headers
        if query:
            assert stream.body.startswith(b":" + b" " * 2048 + b"\n")
        for count, data in enumerate(("first", "second"), start=1):
            publish_internal(proxy, channel, data)
            stream.wait_events(count, timeout=1.0)  # the deadline is the claim
        assert [e.data for e in stream.events] == ["first", "second"]


def test_long_poll_through_nginx_answers_within_a_second_of_a_publish(gateways, proxy):
    no_subscribers(gateways)
    answers: list[requests.Response] = []
    poller = threading.Thread(target=lambda: answers.append(
        requests.get(f"{proxy.public_url}/poll/deliver-poll", timeout=60)), daemon=True)
    poller.start()
    wait_until(lambda: sum(subscribers(g) for g in gateways) == 1, 10,
               message="the long-poll to be held by a gateway")
    publish_internal(proxy, "deliver-poll", "polled")
    poller.join(1.0)
    assert not poller.is_alive(), "the held long-poll did not answer within 1 s of the publish"
    assert answers[0].status_code == 200
    assert [e["data"] for e in answers[0].json()["events"]] == ["polled"]


def test_long_poll_held_for_the_whole_hold_is_answered_by_the_gateway_not_cut_by_nginx(
        gateways, nginx_factory):
    # poll.conf's read timeout must exceed the gateway's default hold, or nginx cuts a poll
    # that gets no event and answers in the gateway's place. Checked on the shipped figures,
    # then live at a fifth of both, their proportion kept: the live poll shows that nginx
    # applies poll.conf's timeout to a held poll.
    [line] = re.findall(r"^ *proxy_read_timeout (\d+)s;$", (NGINX_DIR / "poll.conf").read_text(),
                        flags=re.MULTILINE)
    read_timeout, default_hold = int(line), Config().poll_timeout
    assert read_timeout > default_hold, "poll.conf's read timeout must exceed the default hold"
    scale = 5
    hold = default_hold / scale
    proxy = nginx_factory([g.port for g in gateways], snippet_edits={"poll.conf": (
        f"proxy_read_timeout {line}s;", f"proxy_read_timeout {read_timeout * 1000 // scale}ms;")})
    started = time.monotonic()
    response = requests.get(f"{proxy.public_url}/poll/held-poll?timeout={hold:g}",
                            timeout=read_timeout)
    held = time.monotonic() - started
    assert response.status_code == 200, response.text
    # The gateway's answer names the client's position; nginx's stand-in names none.
    assert "lastEventId" in response.json(), f"nginx answered after {held:.1f} s: {response.text}"
    assert response.json()["events"] == []
    assert held >= hold * 0.9, f"answered after {held:.1f} s: the poll was not held"


def test_event_stream_is_not_gzipped_even_when_nginx_gzips_every_type(gateways, nginx_factory):
    # A server-wide "gzip_types *" is a common way to break event streams; events.conf's
    # "gzip off" must win over it.
    proxy = nginx_factory([g.port for g in gateways], http_edits=[(GZIP_TYPES, "gzip_types *;")])
    poll = requests.get(f"{proxy.public_url}/poll/gzip-everything?timeout=0",
                        headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert poll.headers.get("Content-Encoding") == "gzip", "the variant should gzip everything"
    with open_stream(f"{proxy.public_url}/events/gzip-everything",
                     {"Accept-Encoding": "gzip"}) as stream:
        assert "content-encoding" not in stream.headers
        publish_internal(proxy, "gzip-everything", "plain")
        assert stream.wait_events(1, timeout=1.0)[0].data == "plain"


def test_event_stream_is_unbuffered_by_the_snippet_alone_without_x_accel_buffering(
        gateways, nginx_factory):
    # The gateway's "X-Accel-Buffering: no" switches nginx's buffering off by itself; with
    # nginx told to ignore that header, events.conf's "proxy_buffering off" must do it alone.
    proxy = nginx_factory([g.port for g in gateways], snippet_edits={"events.conf": (
        "proxy_buffering off;", "proxy_buffering off;\n    proxy_ignore_headers X-Accel-Buffering;")})
    with open_stream(f"{proxy.public_url}/events/no-accel") as stream:
        publish_internal(proxy, "no-accel", "unbuffered")
        assert stream.wait_events(1, timeout=1.0)[0].data == "unbuffered"


def test_client_that_stops_reading_is_dropped_by_the_gateway_not_absorbed_by_nginx(
        redis_db, start_gateway, nginx_factory):
    # With buffering on, nginx would read the stream into memory and temporary files for a
    # client that stopped reading, and the gateway would never notice it (tried: 60 MB went
    # by without a drop). With events.conf, the backpressure reaches the gateway, which drops
    # the subscriber once it is --max-pending events behind, as it does without nginx.
    gateway = start_gateway("--redis-url", redis_db.url, "--trusted-proxy", "127.0.0.1",
                            "--max-pending", "10", "--history-length", "20")
    proxy = nginx_factory([gateway.port])
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
    try:
        stalled.settimeout(10)
        stalled.connect(("127.0.0.1", proxy.public_port))
        stalled.sendall(b"GET /events/stalled HTTP/1.1\r\nHost: push.example.com\r\n\r\n")
        assert stalled.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(lambda: subscribers(gateway) == 1, 10, message="the stream to be subscribed")
        publisher = Publisher(redis_db.url, history_length=20)
        event = "x" * 60000
        for sent in range(1, 1001):  # at most 60 MB, several times what socket buffers hold
            publisher.publish("stalled", event)
            if sent % 10 == 0 and requests.get(f"{gateway.url}/healthz",
                                               timeout=5).json()["dropped_slow"]:
                break
        else:
            pytest.fail("60 MB later, the gateway still had not seen the client fall behind")
    finally:
        stalled.close()


# Several processes behind one nginx.

def test_killed_process_streams_resume_through_nginx_on_the_other_missing_nothing(
        redis_db, start_gateway, nginx_factory):
    args = ("--redis-url", redis_db.url, "--trusted-proxy", "127.0.0.1", "--heartbeat", "1")
    doomed, survivor = start_gateway(*args), start_gateway(*args)
    proxy = nginx_factory([doomed.port, survivor.port])
    url = f"{proxy.public_url}/events/failover"
    streams: list[Stream] = []
    on_doomed: list[bool] = []
    try:
        for _ in range(4):
            before = subscribers(doomed)
            streams.append(open_stream(url))
            on_doomed.append(subscribers(doomed) == before + 1)
        assert subscribers(doomed) + subscribers(survivor) == 4
        assert 0 < sum(on_doomed) < 4, "nginx should spread the streams over both processes"

        for data in ("e1", "e2"):
            publish_internal(proxy, "failover", data)
        for stream in streams:
            stream.wait_events(2, timeout=5)

        doomed.stop(signal.SIGKILL)
        dropped = [s for s, lost in zip(streams, on_doomed) if lost]
        for stream in dropped:
            stream.read_to_end(timeout=10)  # nginx ends the stream when its process dies
            assert stream.ended

        # Published while those clients are away; they must get these on their return.
        publisher = Publisher(redis_db.url)
        for data in ("e3", "e4"):
            publisher.publish("failover", data)

        resumed = {}
        for stream in dropped:
            again = open_stream(url, {"Last-Event-ID": stream.parser.last_event_id})
            resumed[id(stream)] = again
        assert subscribers(survivor) == 4
        publish_internal(proxy, "failover", "e5")

        for stream in streams:
            again = resumed.get(id(stream))
            if again is None:
                stream.wait_events(5, timeout=5)
                received = stream.events
            else:
                before = len(stream.events)
                again.wait_for(lambda s, before=before: before + len(s.events) >= 5, timeout=5)
                received = stream.events + again.events
            assert [e.data for e in received] == ["e1", "e2", "e3", "e4", "e5"]
    finally:
        for stream in streams:
            stream.close()


# Heartbeats against nginx's read timeout.

def test_idle_stream_outlives_nginx_read_timeout_thanks_to_the_heartbeat(gateways, nginx_factory):
    proxy = nginx_factory([g.port for g in gateways], snippet_edits={
        "events.conf": (EVENTS_READ_TIMEOUT, f"proxy_read_timeout {SHORT_READ_TIMEOUT}s;")})
    with open_stream(f"{proxy.public_url}/events/idle") as stream:
        comments = stream.parser.comments
        idle = 2 * SHORT_READ_TIMEOUT + 1
        until = time.monotonic() + idle
        try:
            stream.wait_for(lambda s: time.monotonic() >= until, timeout=idle + 5)
        except StreamClosed:
            pytest.fail(f"nginx cut the idle stream despite the heartbeat:\n{proxy.errors()}")
        assert stream.events == []
        assert stream.parser.comments - comments >= idle - 2, "heartbeats should keep arriving"
        publish_internal(proxy, "idle", "still here")
        assert stream.wait_events(1, timeout=1.0)[0].data == "still here"


def test_without_heartbeat_nginx_cuts_an_idle_stream_at_its_read_timeout(start_gateway,
                                                                         nginx_factory):
    # The control for the test above: the shortened read timeout is really in force.
    quiet = start_gateway("--heartbeat", "30")
    proxy = nginx_factory([quiet.port], snippet_edits={
        "events.conf": (EVENTS_READ_TIMEOUT, f"proxy_read_timeout {SHORT_READ_TIMEOUT}s;"),
        # nginx's usual level, so that the error log says why it ended the stream.
        "errors.conf": (SHIPPED_ERROR_LOG, f"error_log {LOCATIONS_ERROR_LOG} error;")})
    with open_stream(f"{proxy.public_url}/events/quiet") as stream:
        started = time.monotonic()
        stream.read_to_end(timeout=SHORT_READ_TIMEOUT + 15)
        assert time.monotonic() - started >= SHORT_READ_TIMEOUT - 0.5
    assert "upstream timed out" in proxy.errors()


# The static bundle.

def test_static_bundle_comes_through_nginx_gzipped_with_the_gateways_cache_headers(gateways,
                                                                                  proxy):
    direct = requests.get(f"{gateways[0].url}/static/eventsource.js",
                          headers={"Accept-Encoding": "identity"}, timeout=10)
    if direct.status_code == 404:
        pytest.skip("the gateway does not serve /static yet")
    assert direct.status_code == 200

    from gateway.assets import BuiltAsset

    digest = BuiltAsset.from_body(direct.content).digest
    short = requests.get(f"{proxy.public_url}/static/eventsource.js",
                         headers={"Accept-Encoding": "gzip"}, timeout=10)
    hashed = requests.get(f"{proxy.public_url}/static/eventsource.{digest}.js",
                          headers={"Accept-Encoding": "gzip"}, timeout=10)
    for response in (short, hashed):
        assert response.status_code == 200
        assert "javascript" in response.headers["Content-Type"]
        assert response.headers.get("Content-Encoding") == "gzip"
        assert "accept-encoding" in response.headers.get("Vary", "").lower()
        assert response.content == direct.content  # requests has gunzipped it
    # nginx passes the gateway's own cache policy through.
    assert short.headers["Cache-Control"] == direct.headers["Cache-Control"]
    short_age, long_age = max_age(short.headers["Cache-Control"]), max_age(
        hashed.headers["Cache-Control"])
    assert short_age is not None and "immutable" not in short.headers["Cache-Control"]
    assert "immutable" in hashed.headers["Cache-Control"]
    assert long_age is not None and long_age >= ONE_YEAR > short_age
    # Revalidation goes through to the gateway: its ETag comes back as a 304.
    etag = short.headers["ETag"]
    again = requests.get(f"{proxy.public_url}/static/eventsource.js",
                         headers={"Accept-Encoding": "gzip", "If-None-Match": etag}, timeout=10)
    assert again.status_code == 304


def test_optional_nginx_cache_of_the_bundle_keeps_gzip_and_plain_apart(gateways, nginx_factory):
    # static.conf's commented-out cache, switched on as its comment says (with the cache in
    # this nginx's prefix), plus a header that shows whether nginx answered from its cache.
    if requests.get(f"{gateways[0].url}/static/eventsource.js", timeout=10).status_code == 404:
        pytest.skip("the gateway does not serve /static yet")
    static = (NGINX_DIR / "static.conf").read_text()
    cache_path = re.search(r"#\s+(proxy_cache_path \S+ (.*);)", static)
    assert cache_path, "static.conf should show the proxy_cache_path to add"
    zone_line = f"    proxy_cache_path cache {cache_path.group(2)};"  # relative to the prefix
    proxy = nginx_factory([g.port for g in gateways], snippet_edits={"static.conf": (
        "#     proxy_cache sse_gateway_static;",
        "proxy_cache sse_gateway_static;\n    add_header X-Cache $upstream_cache_status;")},
        http_edits=[("    include sse-gateway/upstream.conf;",
                     "    include sse-gateway/upstream.conf;\n" + zone_line)])
    def fetch(encoding: str):
        response = requests.get(f"{proxy.public_url}/static/eventsource.js",
                                headers={"Accept-Encoding": encoding}, timeout=10)
        assert response.status_code == 200
        return response.headers.get("X-Cache"), response.headers.get("Content-Encoding")

    def hit(encoding: str):
        got = fetch(encoding)
        return got if got[0] == "HIT" else None

    seen = []
    for encoding in ("gzip", "identity"):
        seen.append(fetch(encoding))
        # nginx files a response in its cache once it has sent it: on a loaded machine the
        # next request can come first and miss too, so it is asked until it hits.
        seen.append(wait_until(functools.partial(hit, encoding), 10,
                               message=f"a cache hit for Accept-Encoding: {encoding}"))
    assert seen == [("MISS", "gzip"), ("HIT", "gzip"), ("MISS", None), ("HIT", None)]


# Publishing: who may, through nginx.

def test_publish_is_refused_by_nginx_on_the_public_server(proxy, redis_server):
    response = requests.post(f"{proxy.public_url}/publish/public-refused", json={"data": "x"},
                             timeout=10)
    assert response.status_code == 403
    # nginx's own error page: the request never reached a gateway.
    assert response.headers["Content-Type"].startswith("text/html")
    assert not redis_server.client.exists(history_key("", "public-refused"))


def test_publish_is_accepted_on_the_internal_listener_which_is_on_loopback_only(proxy,
                                                                                redis_server):
    answer = publish_internal(proxy, "internal-ok", "x")
    assert answer["channel"] == "internal-ok" and answer["id"]
    assert redis_server.client.exists(history_key("", "internal-ok"))
    outside = outside_address()
    if outside is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outside, proxy.internal_port), timeout=5).close()


@pytest.fixture
def exposed(gateways, nginx_factory):
    """The example nginx plus a server that exposes /publish/ on loopback and, when this
    machine has one, on a non-loopback address."""
    port = free_port()
    outside = outside_address()
    listens = f"listen 127.0.0.1:{port};" + (f" listen {outside}:{port};" if outside else "")
    proxy = nginx_factory([g.port for g in gateways],
                          extra_servers=EXPOSED_PUBLISH_SERVER.format(listens=listens))
    return proxy, port, outside  # nginx binds every listener before it accepts on any


@pytest.mark.parametrize("claim", [
    {},
    {"X-Forwarded-For": "127.0.0.1"},
    {"X-Real-IP": "127.0.0.1"},
    {"X-Forwarded-For": "127.0.0.1, 127.0.0.1", "Forwarded": "for=127.0.0.1"},
], ids=["plain", "forged-x-forwarded-for", "forged-x-real-ip", "forged-chain"])
def test_publish_forwarded_by_nginx_from_a_non_loopback_client_is_refused_by_the_gateway(
        exposed, claim):
    # The client really is elsewhere: its socket is bound to this machine's non-loopback
    # address, so nginx's $remote_addr is that address. The gateway's peer is nginx on
    # 127.0.0.1, a trusted proxy, so it believes the X-Forwarded-For that nginx appended to:
    # reading from the right, the first address that is not a trusted proxy is the client's
    # real one, whatever loopback addresses the client itself put to the left.
    _proxy, port, outside = exposed
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address to send from")
    status, content_type, body = post_from(outside, port, "/publish/outside", claim)
    assert status == 403
    assert content_type.startswith("application/json"), "the gateway, not nginx, must refuse"
    assert json.loads(body)["error"] == "forbidden"


def test_publish_forwarded_with_a_chain_naming_an_outside_client_is_refused(exposed):
    # Without another machine: the sender is local, but the chain it arrives with names an
    # outside client first (as a front proxy would have written it), and nginx appends
    # 127.0.0.1. The gateway must take the original client from the chain, not nginx's hop.
    _proxy, port, _ = exposed
    status, content_type, _body = post_from("127.0.0.1", port, "/publish/chain",
                                           {"X-Forwarded-For": "203.0.113.9"})
    assert status == 403
    assert content_type.startswith("application/json")


def test_publish_forwarded_by_trusted_nginx_from_loopback_is_allowed(exposed):
    _proxy, port, _ = exposed
    status, _content_type, body = post_from("127.0.0.1", port, "/publish/local", {})
    assert status == 200, body
    assert json.loads(body)["channel"] == "local"


def test_publish_forwarded_by_nginx_is_refused_when_the_gateway_trusts_no_proxy(
        start_gateway, nginx_factory):
    # Without --trusted-proxy, nginx's forwarding headers come from an unknown party: the
    # request is not local, even though nginx and the publisher are both on loopback.
    gateway = start_gateway()
    proxy = nginx_factory([gateway.port])
    response = requests.post(f"{proxy.internal_url}/publish/untrusted", json={"data": "x"},
                             timeout=10)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert gateway.publish("untrusted", {"data": "x"}).status_code == 200  # direct: local


# When no gateway answers: nginx answers in its place, so that browsers keep retrying.

PAGE = "https://www.example.com"
NGINX_RETRY = range(2000, 6000)  # what unavailable.conf asks for, in ms


@pytest.fixture
def all_down(start_gateway, nginx_factory):
    """The example nginx in front of two gateway processes that were started, then stopped."""
    stopped = [start_gateway(), start_gateway()]
    for gateway in stopped:
        gateway.stop()
    return nginx_factory([gateway.port for gateway in stopped])


def get_raw(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, float]:
    """One GET: status, headers (lower-cased names), the whole body, and the seconds it took."""
    parts = urlsplit(url)
    started = time.monotonic()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", parts.path + ("?" + parts.query if parts.query else ""),
                           headers=headers)
        response = connection.getresponse()
        body = response.read()
        found = {name.lower(): value for name, value in response.getheaders()}
        return response.status, found, body, time.monotonic() - started
    finally:
        connection.close()


def assert_nginx_fallback_headers(headers: dict[str, str], content_type: str) -> None:
    assert headers["content-type"] == content_type, headers
    assert headers["cache-control"] == "no-cache, no-store", headers
    assert headers["pragma"] == "no-cache" and headers["expires"].startswith("Thu, 01 Jan 1970")
    assert headers["x-content-type-options"] == "nosniff"
    # The page's own origin, with credentials: an EventSource sending cookies can read it too.
    assert headers["access-control-allow-origin"] == PAGE, headers
    assert headers["access-control-allow-credentials"] == "true"
    assert "origin" in headers["vary"].lower()


def assert_retry_stream(body: bytes) -> int:
    """A stream of a retry hint and a comment, nothing dispatched, no id: the retry time."""
    parser = EventStreamParser()
    assert parser.feed(body) == []
    assert parser.retry in NGINX_RETRY, body
    assert body == (f"retry: {parser.retry}\n: no gateway answered; reconnect in "
                    f"{parser.retry} ms\n").encode()
    return parser.retry


@pytest.mark.parametrize("query", ["", "?transport=stream"], ids=["native", "padded"])
def test_with_every_gateway_down_events_get_a_200_stream_with_a_retry_hint_that_ends(
        all_down, query):
    hints = set()
    for _ in range(6):
        status, headers, body, took = get_raw(
            f"{all_down.public_url}/events/down{query}",
            {"Origin": PAGE, "Last-Event-ID": "1796120157926-0", "Accept": "text/event-stream"})
        assert status == 200, body
        assert took < 5, "the answer must end at once, so that the browser reconnects"
        assert_nginx_fallback_headers(headers, "text/event-stream; charset=utf-8")
        # No blank line and no id: the browser's last event id stays as it was.
        hints.add(assert_retry_stream(body))
    assert len(hints) > 1, f"the retry hints should be spread: {hints}"


def test_with_every_gateway_down_polls_get_an_empty_answer_after_a_pause(all_down):
    cases = {
        "json": ("lastEventId=1796120157926-0&timeout=0", None),
        "jsonp": ("callback=__sseg_cb_mhq2x1k30&lastEventId=x", "__sseg_cb_mhq2x1k30"),
        # Not a plain identifier: plain JSON, nothing of it reflected.
        "dotted": ("callback=window.opener.document.body.click", None),
        "script": ("callback=%3C%2Fscript%3Ealert(1)", None),
    }
    answers: dict[str, tuple] = {}
    pollers = [threading.Thread(target=lambda name=name, query=query: answers.__setitem__(
        name, get_raw(f"{all_down.public_url}/poll/down?{query}", {"Origin": PAGE})))
        for name, (query, _) in cases.items()]
    for poller in pollers:
        poller.start()
    for poller in pollers:
        poller.join(30)
    assert set(answers) == set(cases)
    for name, (_query, callback) in cases.items():
        status, headers, body, took = answers[name]
        assert status == 200, (name, body)
        # A client polls again at once: nginx sends the answer slowly instead of pausing.
        assert 1.5 <= took < 15, (name, took)
        text = body.decode("ascii")
        if callback is None:
            assert_nginx_fallback_headers(headers, "application/json; charset=utf-8")
            answer = json.loads(text)
            assert "window" not in text and "script" not in text
        else:
            assert_nginx_fallback_headers(headers, "application/javascript; charset=utf-8")
            prefix = f"/**/{callback}("
            assert text.startswith(prefix) and text.endswith(");"), text
            answer = json.loads(text[len(prefix):-2])
        # No cursor: the client keeps its own.
        assert set(answer) == {"events", "retry"} and answer["events"] == [], answer
        assert answer["retry"] in NGINX_RETRY


def test_a_gateway_that_does_not_answer_in_time_is_answered_for_by_nginx(start_gateway,
                                                                        nginx_factory):
    # A hung process (stopped here with SIGSTOP) accepts connections and answers nothing:
    # after proxy_read_timeout nginx has a 504, which events.conf turns into the retry stream.
    hung = start_gateway()
    proxy = nginx_factory([hung.port], snippet_edits={
        "events.conf": (EVENTS_READ_TIMEOUT, f"proxy_read_timeout {SHORT_READ_TIMEOUT}s;")})
    hung.proc.send_signal(signal.SIGSTOP)
    try:
        status, headers, body, took = get_raw(f"{proxy.public_url}/events/hung",
                                              {"Origin": PAGE})
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    assert status == 200, body
    assert SHORT_READ_TIMEOUT - 0.5 <= took < SHORT_READ_TIMEOUT + 10
    assert_nginx_fallback_headers(headers, "text/event-stream; charset=utf-8")
    assert_retry_stream(body)
    wait_until(lambda: proxy.upstream_statuses("/events/hung"), 10,
               message="the request in the access log")
    # Its port is both of upstream.conf's server lines here: nginx tried it twice.
    assert proxy.upstream_statuses("/events/hung") == [
        f"127.0.0.1:{hung.port}, 127.0.0.1:{hung.port} 504, 504"]


def test_a_gateways_own_error_answers_pass_through_nginx_unchanged(proxy):
    for path in ("/events/" + "x" * 129, "/poll/chan?callback=a.b", "/events/a/b"):
        response = requests.get(proxy.public_url + path, timeout=10)
        assert response.status_code in (400, 404), (path, response.status_code)
        assert response.headers["Content-Type"].startswith("application/json"), path
        assert set(response.json()) == {"error", "detail"}


# TLS and HTTP/2, as docs/nginx.md shows them.

def docs_block(containing: str) -> str:
    """The fenced nginx block of docs/nginx.md that contains the given text."""
    blocks = re.findall(r"```nginx\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"docs/nginx.md should have one nginx block with {containing!r}"
    return found[0]


def read_until(proc: subprocess.Popen, wanted: bytes, timeout: float, seen: bytearray) -> None:
    """Read a child's stdout into `seen` until it contains `wanted`, within the timeout."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while wanted not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no {wanted!r} within {timeout} s; got {bytes(seen)!r}")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the stream ended before {wanted!r}; got {bytes(seen)!r}")
            seen += chunk


def test_tls_http2_server_from_the_docs_streams_events_unbuffered(gateways, nginx_factory,
                                                                 tmp_path):
    curl = shutil.which("curl")
    openssl = shutil.which("openssl")
    if curl is None or openssl is None:
        pytest.skip("curl and openssl are needed to speak HTTP/2 over TLS")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=push.example.com", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30, preexec_fn=die_with_parent())
    port = free_port()
    server = docs_block("listen 443 ssl http2;")
    for old, new in (("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;"),
                     ("/etc/ssl/certs/push.example.com.pem", str(cert)),
                     ("/etc/ssl/private/push.example.com.key", str(key))):
        server = _replace_once(server, old, new)
    proxy = nginx_factory([g.port for g in gateways], extra_servers="\n" + server)
    client = subprocess.Popen(
        [curl, "--http2", "--insecure", "--silent", "--show-error", "--no-buffer", "--include",
         "--compressed", "--max-time", "30",
         "--resolve", f"push.example.com:{port}:127.0.0.1",
         f"https://push.example.com:{port}/events/over-h2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
    try:
        seen = bytearray()
        read_until(client, b"\nid:", 10, seen)  # the head: subscribed
        head = bytes(seen).split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/2 200"), head
        assert b"content-encoding" not in head
        publish_internal(proxy, "over-h2", "multiplexed")
        read_until(client, b"data: multiplexed\n", 1.0, seen)
    finally:
        client.terminate()
        client.wait(10)


# What nginx's access log keeps.

def test_access_log_keeps_no_query_string_nor_referer_so_no_token(proxy):
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-in-the-query.c2lnbmF0dXJl"
    page = "https://site.example/inbox?session_token=secret-in-the-referer"
    requests.get(f"{proxy.public_url}/poll/log-check?timeout=0&token={secret}",
                 headers={"Referer": page}, timeout=10)
    with open_stream(f"{proxy.public_url}/events/log-check?access_token={secret}",
                     {"Referer": page}) as stream:
        stream.wait_for(lambda s: s.body, 5)
    # nginx writes a request's line when it ends: the stream's once its client has gone.
    wait_until(lambda: proxy.access_log.read_text().count("log-check") >= 2, 10,
               message="both requests to be in the access log")
    logged = proxy.access_log.read_text()
    assert '"GET /poll/log-check HTTP/1.1" 200' in logged
    assert '"GET /events/log-check HTTP/1.1"' in logged
    assert "secret-in-the" not in logged and "token" not in logged


@pytest.mark.parametrize("level", ["crit", "error"], ids=["shipped", "nginx-default"])
def test_a_failed_request_keeps_its_token_out_of_the_error_log_and_its_upstreams_in_the_access_log(
        start_gateway, nginx_factory, level):
    # Both gateway processes down: nginx tries each, then answers in their place. At nginx's
    # usual level (the control) its error log names the request line, token included.
    stopped = [start_gateway(), start_gateway()]
    for gateway in stopped:
        gateway.stop()
    proxy = nginx_factory([gateway.port for gateway in stopped], snippet_edits={
        "errors.conf": (SHIPPED_ERROR_LOG, f"error_log {LOCATIONS_ERROR_LOG} {level};")})
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-in-a-failed-request.c2lnbmF0dXJl"
    for path in (f"/events/down-log?token={secret}", f"/poll/down-log?timeout=0&token={secret}"):
        status, _, _, _ = get_raw(proxy.public_url + path, {"Origin": PAGE})
        assert status == 200
    paths = ("/events/down-log", "/poll/down-log")
    wait_until(lambda: all(proxy.upstream_statuses(path) for path in paths), 10,
               message="both requests in the access log")
    ports = sorted(gateway.port for gateway in stopped)
    for path in paths:
        [tried] = proxy.upstream_statuses(path)
        # The first request tried each process ("127.0.0.1:8081, 127.0.0.1:8082 502, 502");
        # the next found both marked failed for fail_timeout, and names the upstream group.
        if tried != "sse_gateway 502" or path == paths[0]:
            addresses, statuses = tried.replace(", ", ",").split(" ")
            assert sorted(int(a.rsplit(":", 1)[1]) for a in addresses.split(",")) == ports, tried
            assert statuses.split(",") == ["502"] * len(ports), tried
    assert secret not in proxy.access_log.read_text()
    if level == "crit":
        assert secret not in proxy.errors()
    else:
        assert "connect() failed" in proxy.errors() and secret in proxy.errors()
