"""A proxy that buffers the stream: the polyfill sees no byte of it, falls back to long-polling
from the last event ID, and keeps to long-polling for the rest of the session.

The proxy is a real nginx with `proxy_buffering on`, the gateway's `X-Accel-Buffering: no`
ignored, and gzip for every type: nginx then holds the response (head included) until it has
enough to compress, as a site-wide `gzip_types *` would. (Buffering alone does not hold back a
response that a fast client reads.)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .support import free_port, wait_until

NGINX_CONF = """
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{gateway_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            gzip on;
            gzip_types *;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@pytest.fixture
def buffering_proxy(pinned_gateways):
    """A gateway behind a buffering nginx; yields (gateway, the proxy's URL)."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        pytest.fail("nginx is missing: run the README's test command (bash tests/run.sh)")
    gateway = pinned_gateways(["--heartbeat", "1"])
    prefix = Path(tempfile.mkdtemp(prefix="sse-gateway-nginx-"))
    port = free_port()
    (prefix / "nginx.conf").write_text(NGINX_CONF.format(
        prefix=prefix, port=port, gateway_port=gateway.port))
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listening(port) or proc.poll() is not None, 10,
                   message="nginx to listen")
        assert proc.poll() is None, (prefix / "error.log").read_text()
        yield gateway, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def first_bytes_within(url: str, seconds: float) -> bytes:
    """What a stream request through `url` shows in the first `seconds` (head included)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=seconds) as sock:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     "Accept-Encoding: gzip\r\n\r\n".encode())
        try:
            return sock.recv(65536)
        except socket.timeout:
            return b""


def test_a_buffered_stream_falls_back_to_long_polling_and_the_session_remembers_it(
        buffering_proxy, channel, open_harness, publisher):
    gateway, proxy = buffering_proxy
    # The proxy does hold the stream back: not even its head comes through within 2 s.
    assert first_bytes_within(f"{proxy}/events/{channel}-probe?transport=stream", 2) == b""

    harness = open_harness(proxy, "auto")
    harness.listen(f"{proxy}/events/{channel}", "auto")
    harness.wait_open(timeout=15)  # 5 s without a byte of the stream, then the first poll
    assert [r for r in harness.requests_to(proxy) if "/events/" in r.url]
    pub = publisher(gateway)
    ids = [pub.publish(channel, f"event {i}") for i in range(3)]
    got = harness.wait_received(3)
    assert [(e["data"], e["lastEventId"]) for e in got] == [
        (f"event {i}", ids[i]) for i in range(3)]
    assert harness.opens() == [1] and harness.errors() == []

    # The next source of the session long-polls from the start.
    streams = len([r for r in harness.requests_to(proxy) if "/events/" in r.url])
    polls = len(harness.requests_to(f"{proxy}/poll/"))
    harness.listen(f"{proxy}/events/{channel}", "auto")
    harness.wait_requests(f"{proxy}/poll/", polls + 1)
    harness.wait_open(timeout=5)
    assert len([r for r in harness.requests_to(proxy) if "/events/" in r.url]) == streams
    assert harness.page.evaluate("() => sessionStorage.length") == 1


def test_an_unbuffered_stream_stays_a_stream(shared_gateway, channel, open_harness, publisher):
    harness = open_harness(shared_gateway.url, "auto")
    harness.listen(harness.events_url(channel), "auto")
    harness.wait_open()
    harness.observe(5.5)  # past the 5 s in which a first byte must come
    publisher(shared_gateway).publish(channel, "streamed")
    harness.wait_received(1)
    assert not harness.requests_to(f"{shared_gateway.url}/poll/")
    assert harness.page.evaluate("() => sessionStorage.length") == 0
