"""Fixtures that start real processes: redis-server and `sse-gateway serve`, on free ports;
and the helpers that talk to them, shared by the test modules.

Every process a test starts takes `preexec_fn=die_with_parent()`, and the run fails when one
outlives the tests (see child_processes.py).
"""

import asyncio
import collections
import concurrent.futures
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional

import pytest
import redis
import requests
import suite_session
from child_processes import (
    children,
    die_with_parent,
    gone,
    no_process_outlives_the_tests,  # noqa: F401 (autouse)
)
from sse_client import Stream, subscribed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Under pytest-xdist, worker n of N takes only the ports p with p // 2 % N == n (the kernel
# hands out mostly even ports to bind(0)): two workers never pick the same port for processes
# that have yet to bind it. Nor does one worker twice in a row.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_handed_out: "collections.deque[int]" = collections.deque(maxlen=64)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a process about to be started."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port // 2 % _WORKERS == _WORKER and port not in _handed_out:
            _handed_out.append(port)
            return port
    raise AssertionError("no free port of this worker's share after 1000 tries")


def pytest_configure(config: pytest.Config) -> None:
    suite_session.configure(config)


@contextmanager
def file_descriptors(need: int) -> Iterator[None]:
    """RLIMIT_NOFILE at least `need` for the block (gateways started meanwhile inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard < need:
            pytest.fail(f"RLIMIT_NOFILE's hard limit {hard} is below the {need} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_async(coroutine):
    """`asyncio.run(coroutine)` in a thread of its own: the main thread may have an event loop
    running already (Playwright's sync API keeps one for the browser tests' session, which runs
    in the same pytest worker). The coroutine must not start processes (see child_processes)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def wait_until(condition, timeout: float = 10.0, interval: float = 0.02, message: str = ""):
    """Poll a cheap condition until it holds or the deadline passes (tests only)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {message or condition}")
        time.sleep(interval)


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="sse-gateway-redis-")
        self.proc: Optional[subprocess.Popen] = None
        self.client = redis.Redis(port=self.port, socket_timeout=5)

    def start(self, *options: str) -> None:
        """Start (again, on the same port and directory); `options` override the defaults
        (e.g. `--appendonly yes`)."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; run the README's test command")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent(),
        )
        wait_until(self._answers, 10, message="redis-server to answer PING")

    def _answers(self) -> bool:
        try:
            return self.client.ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_db(redis_server):
    """The session's redis-server, emptied, running, for one test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.client.flushall()
    return redis_server


class Gateway:
    """One `sse-gateway serve` process (on `port`, e.g. a killed gateway's, or a free one)."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None,
                 port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tempfile.mktemp(prefix="sse-gateway-", suffix=".log")
        self._log = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(self.port), *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )
        try:
            wait_until(self._healthy, 15, message=f"the gateway on {self.url} to be healthy")
        except BaseException:
            self.cleanup()
            raise

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited early:\n{self.log()}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def log(self) -> str:
        self._log.flush()
        with open(self.log_path, "rb") as handle:
            return handle.read().decode("utf-8", errors="replace")

    def publish(self, channel: str, body, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/publish/{channel}", json=body, timeout=10, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def cleanup(self) -> None:
        workers = children(self.proc.pid) if self.proc.poll() is None else []  # --workers
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass
        # They stop on their own when the supervisor dies (SIGTERM: their clean shutdown).
        wait_until(lambda: all(map(gone, workers)), 15,
                   message=f"the workers {workers} to exit with their supervisor")


def publish_all(gateway, channel: str, values: Iterable[str]) -> List[str]:
    """Publish each value as an event's data on `channel`, each accepted; their ids."""
    ids = []
    for value in values:
        response = gateway.publish(channel, {"data": value})
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    return ids


def command_calls(client: redis.Redis) -> Dict[str, int]:
    """Redis' count of calls per command since it started (INFO itself, which reads them, left
    out)."""
    return {name[len("cmdstat_"):]: stats["calls"]
            for name, stats in client.info("commandstats").items() if name != "cmdstat_info"}


def health(gateway) -> dict:
    """The gateway's /healthz body; it must answer 200."""
    response = requests.get(gateway.url + "/healthz", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def start_gateway():
    """Start gateways with given CLI args; all are killed at the end of the test."""
    started: List[Gateway] = []

    def start(*args: str, env: Optional[Dict[str, str]] = None,
              port: Optional[int] = None) -> Gateway:
        gateway = Gateway(list(args), env, port)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.cleanup()


@pytest.fixture(params=["embedded", "redis"])
def broker_args(request):
    """CLI args selecting each broker in turn; the Redis one on a fresh database."""
    if request.param == "embedded":
        return []
    server = request.getfixturevalue("redis_db")
    return ["--redis-url", server.url]


@pytest.fixture
def gateway(start_gateway, broker_args):
    """A gateway on each broker, with a short heartbeat."""
    return start_gateway(*broker_args, "--heartbeat", "1")


@pytest.fixture
def start_harness(redis_db):
    """Start hubs on Redis in a process of their own (tests/recent_harness.py), given
    (history_length, recent_events, recent_bytes, history_age); all are stopped after the test."""
    from recent_client import Harness

    started: List[Harness] = []

    def start(*limits) -> Harness:
        started.append(Harness(redis_db, *limits))
        return started[-1]

    yield start
    for harness in started:
        harness.close()


@pytest.fixture
def open_stream():
    """Open a stream and wait until its subscription is live; all are closed after the test."""
    opened: List[Stream] = []

    def open_(url: str, headers: Optional[Dict[str, str]] = None) -> Stream:
        stream = Stream(url, headers)
        opened.append(stream)
        assert stream.status == 200, stream.body
        stream.wait_for(subscribed, 10)
        return stream

    yield open_
    for stream in opened:
        stream.close()
