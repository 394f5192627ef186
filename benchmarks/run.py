#!/usr/bin/env python3
"""Benchmark runner: sse-gateway against nginx+nchan and flask-sse, in one run.

For each target and each subscriber count it starts Redis (where the target needs it) and the
server pinned to core 0, runs the workload's client pinned to core 1, stops everything, and
finally prints a results table with ratios against nchan. Rows are also written as JSON lines.
Workloads: ``fanout`` (``loadgen.py``: N open streams, R events/s), ``storm`` (``storm.py``: N
clients reconnecting at once with a recent Last-Event-ID), ``longpoll`` (``longpoll.py``: N
clients long-polling while R events/s are published), ``publish`` (``publish.py``: single-event
publishes at R/s to N subscribers, then batches as fast as they go) and ``channels``
(``publish.py``: N subscribers each on a channel of its own, R events/s spread over them). The
``floor`` target is a minimal C server (``floor.c``, built with cc on the fly): what the machine
allows.

    python3 benchmarks/run.py                      # fan-out matrix, ~5 minutes
    python3 benchmarks/run.py --targets nchan,flask-sse --subscribers 1000,5000
    python3 benchmarks/run.py --workload storm     # reconnect storm, gateway and nchan
    python3 benchmarks/run.py --workload longpoll  # long-poll, gateway and nchan
    python3 benchmarks/run.py --workload publish   # publish cost: gateway, nchan, floor
    python3 benchmarks/run.py --workload channels  # 10,000 channels of one subscriber each
    python3 benchmarks/run.py --smoke              # gateway alone, N=100, for CI

Needs Linux, taskset, redis-server and nginx; installs libnginx-mod-nchan with apt-get when it is
missing, and creates benchmarks/.venv (flask-sse, gunicorn, gevent, uvloop and the gateway's
dependencies) on first use. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
# On a one-core machine (a CI runner, say) both share core 0 and the figures mean little.
SERVER_CORE, LOADGEN_CORE = 0, 1 if (os.cpu_count() or 1) > 1 else 0
ALL_TARGETS = ("sse-gateway", "nchan", "flask-sse", "floor")
WORKLOADS = ("fanout", "storm", "longpoll", "publish", "channels")
# Per workload: default targets, subscriber counts and rates (flask-sse neither resumes from a
# Last-Event-ID nor long-polls, and publishes through Redis only; the floor only fans out).
WORKLOAD_DEFAULTS = {
    "fanout": (ALL_TARGETS, "1000,5000,10000", "20"),
    "storm": (("sse-gateway", "nchan"), "1000,3000", "0"),
    "longpoll": (("sse-gateway", "nchan"), "1000,3000", "1"),
    "publish": (("sse-gateway", "nchan", "floor"), "10", "2000,5000"),
    "channels": (("sse-gateway", "nchan", "floor"), "10000", "10000"),
}
# What each workload's smoke run (--smoke) does instead: targets, N, rates, seconds.
SMOKE = {
    "fanout": (("sse-gateway",), "100", "20", 3.0),
    "publish": (("sse-gateway", "floor"), "10", "500", 2.0),
    "channels": (("sse-gateway", "floor"), "200", "400", 2.0),
}
PUBLISH_WORKLOADS = ("publish", "channels")
# Not in the default matrix: `serve --workers 2` on every core, the generator on one of them.
EXTRA_TARGETS = ("sse-gateway-x2", "sse-gateway-token", "sse-gateway-cluster")
CHANNEL = "bench"
BENCH_KEY = "benchmark-only-hs256-secret-32-bytes"  # sse-gateway-token: signs the subscribers' token


class TargetError(Exception):
    """The target could not be started or measured; the matrix goes on without it."""


# --------------------------------------------------------------------------- environment


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to its hard limit; children (servers, loadgen) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: the gateway's needs are then installed by hand
        return []
    try:
        with open(REPO / "pyproject.toml", "rb") as f:
            return list(tomllib.load(f).get("project", {}).get("dependencies", []))
    except (OSError, ValueError):
        return []


def ensure_venv() -> Path:
    """Create benchmarks/.venv on first use; reinstall when the requirements change."""
    python = VENV / "bin" / "python"
    dependencies = gateway_dependencies()
    wanted = (BENCH / "requirements.txt").read_text() + "\n".join(dependencies)
    stamp = VENV / ".bench-requirements"
    digest = hashlib.sha256(wanted.encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    log(f"preparing {VENV} ...")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(BENCH / "requirements.txt"), *dependencies], check=True)
    stamp.write_text(digest)
    return python


def can_import(python: str, *modules: str) -> bool:
    code = "import " + ", ".join(modules)
    return subprocess.run([python, "-c", code], check=False, capture_output=True).returncode == 0


def ensure_nchan() -> None:
    if NCHAN_MODULE.exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise TargetError(f"{NCHAN_MODULE} missing; install libnginx-mod-nchan")
    log("installing libnginx-mod-nchan ...")
    cmd = ["apt-get", "install", "-y", "-q", "libnginx-mod-nchan"]
    if subprocess.run(cmd, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(cmd, check=False, capture_output=True)
    if not NCHAN_MODULE.exists():
        raise TargetError("could not install libnginx-mod-nchan")


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


VERSIONS_SCRIPT = """
import importlib.metadata as m
for n in ('flask-sse', 'flask', 'gunicorn', 'gevent', 'redis', 'uvloop'):
    try:
        print(n, m.version(n))
    except Exception:
        pass
"""


def machine_facts(python: str) -> dict[str, object]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = command_output([python, "-c", VERSIONS_SCRIPT])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": command_output([python, "-c", "import sys; print(sys.version.split()[0])"]),
        "redis": command_output(["redis-server", "--version"]),
        "nginx": command_output(["nginx", "-v"]),
        "nchan": command_output(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"]),
        "gateway_commit": command_output(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "packages": dict(line.split(" ", 1) for line in versions.splitlines() if " " in line),
    }


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of task time the whole machine spent over ``seconds``."""

    def total() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (v[0] + v[1] + v[2] + v[7]) / os.sysconf("SC_CLK_TCK")

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait up to max_wait seconds for the machine to be idle; return the last busy reading."""
    deadline = time.monotonic() + max_wait
    busy = busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        log(f"   machine busy ({busy:.2f} cores used by other processes); waiting ...")
        time.sleep(4)
        busy = busy_cores()
    return busy


def forget_tcp_metrics() -> bool:
    """Drop what the kernel learned from the previous cell's loopback connections.

    Linux keeps, per destination address, the RTT and congestion window of connections that
    closed cleanly, and starts new connections to that address from them. Every cell connects
    to 127.0.0.1, so without this a cell would start from what the one before it left: after a
    saturated cell, an RTT of milliseconds on loopback. Needs CAP_NET_ADMIN and iproute2's ip.
    """
    if shutil.which("ip") is None:
        return False
    done = subprocess.run(["ip", "tcp_metrics", "delete", "127.0.0.1"], capture_output=True,
                          check=False, stdin=subprocess.DEVNULL)
    # "No such process": nothing was cached, which is as good.
    return done.returncode == 0 or b"No such process" in done.stderr


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def die_with_runner() -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM when this runner dies, however it dies (Linux's
    parent-death signal, kept across exec), so a killed run leaves no server behind. SIGTERM:
    each server then stops its own workers."""
    runner = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != runner:  # the runner died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def child_pids(pid: int) -> list[int]:
    """All descendants of pid (gunicorn and nginx workers)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


@dataclass
class Services:
    """Processes of one matrix cell; ``stop`` kills each one's process group."""

    workdir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
        cores: str = str(SERVER_CORE),
    ) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(out)
        proc = subprocess.Popen(
            ["taskset", "-c", cores, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_runner(),
        )
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 6) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def wait_ready(
        self, name: str, proc: subprocess.Popen, probe: Callable[[], bool], timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise TargetError(f"{name} exited ({proc.returncode}): {self.log_tail(name)}")
            if probe():
                return
            time.sleep(0.1)
        raise TargetError(f"{name} not ready after {timeout:.0f} s: {self.log_tail(name)}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        # A group may outlive its leader (a worker that ignored SIGTERM): sweep it too.
        for _, proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for out in self.logs:
            out.close()
        self.procs.clear()
        self.logs.clear()


def probe(port: int, request: bytes, reply_prefix: bytes) -> bool:
    """True once something on port answers `request` with a reply starting with `reply_prefix`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(request)
            return s.recv(16).startswith(reply_prefix)
    except OSError:
        return False


def http_probe(port: int) -> bool:
    return probe(port, b"GET /__bench_probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                 b"HTTP/1.")


def redis_probe(port: int) -> bool:
    return probe(port, b"PING\r\n", b"+PONG")


def start_redis(svc: Services) -> tuple[int, int]:
    port = free_port()
    proc = svc.spawn(
        "redis",
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "19000",
            "--protected-mode",
            "yes",
            "--dir",
            str(svc.workdir),
        ],
    )
    svc.wait_ready("redis", proc, lambda: redis_probe(port))
    return port, proc.pid


def start_redis_cluster(svc: Services, masters: int = 3) -> tuple[list[int], list[int]]:
    """A Redis Cluster of `masters` masters without replicas: their ports and pids."""
    ports, pids = [], []
    while len(ports) < masters:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue  # the cluster bus listens 10000 above
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        proc = svc.spawn(f"redis-{port}", [
            "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--maxclients", "19000", "--protected-mode", "yes",
            "--cluster-enabled", "yes", "--cluster-config-file",
            str(svc.workdir / f"nodes-{port}.conf"), "--dir", str(svc.workdir)])
        svc.wait_ready("redis", proc, lambda p=port: redis_probe(p))
        ports.append(port)
        pids.append(proc.pid)
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not all(cluster_ok(p) for p in ports):
        if time.monotonic() > deadline:
            raise TargetError("the Redis Cluster did not become ok")
        time.sleep(0.1)
    return ports, pids


def cluster_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in s.recv(4096)
    except OSError:
        return False


# --------------------------------------------------------------------------- targets


@dataclass
class Started:
    subscribe_url: str
    publish_args: list[str]
    cpu_pids: list[int]
    poll_url: str = ""  # long-poll URL, where the target has one
    poll_protocol: str = ""  # how longpoll.py follows it: gateway or nchan
    redis_url: str = ""  # the target's Redis, whose commands storm.py and longpoll.py count
    token: str = ""  # the subscribers' token (in the query), for a private channel
    redis_pid: int = 0  # its process (in cpu_pids too): publish.py reports its CPU apart
    cluster_pids: list[int] = field(default_factory=list)  # a Redis Cluster's, likewise
    # For publish.py: event-stream and publish URLs with {channel}, how a single event is
    # posted (gateway: a JSON message; raw: the payload), and the batch URL where there is one.
    subscribe_template: str = ""
    publish_template: str = ""
    publish_format: str = ""
    batch_url: str = ""


def start_gateway(svc: Services, python: str, workers: int = 1, token: bool = False,
                  cluster: bool = False) -> Started:
    """`token`: the channel private, every subscriber with its own HS256 token in the query;
    `cluster`: on a 3-master Redis Cluster rather than one Redis."""
    if cluster:
        ports, cluster_pids = start_redis_cluster(svc)
        redis_args = ["--redis-cluster", "--redis-url",
                      ",".join(f"redis://127.0.0.1:{p}" for p in ports)]
        redis_port, redis_pid = 0, 0
    else:
        redis_port, redis_pid = start_redis(svc)
        redis_args = ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
        cluster_pids = []
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    )
    proc = svc.spawn(
        "sse-gateway",
        [
            python,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *redis_args,
            "--log-level",
            "info" if workers > 1 else "warning",
            "--max-pending",
            "1000",
            "--workers",
            str(workers),
            *(["--private-channel", CHANNEL, "--subscribe-key", BENCH_KEY] if token else []),
        ],
        env=env,
        cwd=REPO,
        cores=",".join(str(core) for core in range(min(workers, os.cpu_count() or 1))),
    )
    svc.wait_ready("sse-gateway", proc, lambda: http_probe(port))
    # Each worker listens once its Redis connection is up, and says so.
    log_path = svc.workdir / "sse-gateway.log"
    svc.wait_ready("sse-gateway", proc,
                   lambda: workers == 1 or log_path.read_text().count("listening on") >= workers)
    base = f"http://127.0.0.1:{port}"
    return Started(
        subscribe_url=f"{base}/events/{CHANNEL}",
        token=mint_token(python, env) if token else "",
        publish_args=["--publish", "http-json", "--publish-url", f"{base}/publish/{CHANNEL}"],
        cpu_pids=[proc.pid, *child_pids(proc.pid), *([redis_pid] if redis_pid else []),
                  *cluster_pids],
        poll_url=f"{base}/poll/{CHANNEL}",
        poll_protocol="gateway",
        redis_url=f"redis://127.0.0.1:{redis_port}/0" if redis_port else "",
        redis_pid=redis_pid,
        cluster_pids=cluster_pids,
        subscribe_template=f"{base}/events/{{channel}}",
        publish_template=f"{base}/publish/{{channel}}",
        publish_format="gateway",
        batch_url=f"{base}/publish/",
    )


def mint_token(python: str, env: dict[str, str]) -> str:
    """An HS256 token for CHANNEL, from `sse-gateway token`: verified at each connection."""
    result = subprocess.run(
        [python, "-m", "gateway", "token", "--subscribe", CHANNEL, "--subscribe-key", BENCH_KEY,
         "--ttl", "3600"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise TargetError(f"sse-gateway token failed: {result.stderr.strip()}")
    return result.stdout.strip()


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
load_module {module};

events {{
    worker_connections {connections};
    multi_accept on;
}}

http {{
    access_log off;
    # Publishers pipeline thousands of requests on one connection; nginx would close it after
    # 1,000 (its default), with the requests written after those unanswered.
    keepalive_requests 100000000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    server {{
        listen 127.0.0.1:{port} backlog=4096;

        location ~ ^/sub/([\\w.]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}

        location ~ ^/lp/(\\w+)$ {{
            nchan_subscriber longpoll;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}

        location ~ ^/pub/([\\w.]+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
            nchan_message_buffer_length 16;
            nchan_message_timeout 60s;
        }}
    }}
}}
"""


def start_nchan(svc: Services, python: str) -> Started:
    ensure_nchan()
    prefix = svc.workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            prefix=prefix,
            module=NCHAN_MODULE,
            port=port,
            nofile=nofile,
            connections=max(1024, nofile - 500),
        )
    )
    # Workers run as an unprivileged user: let them reach the prefix.
    prefix.chmod(0o755)
    svc.workdir.chmod(0o755)
    proc = svc.spawn("nginx", ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")])
    svc.wait_ready("nginx", proc, lambda: http_probe(port))
    base = f"http://127.0.0.1:{port}"
    return Started(
        subscribe_url=f"{base}/sub/{CHANNEL}",
        publish_args=["--publish", "http-nchan", "--publish-url", f"{base}/pub/{CHANNEL}"],
        cpu_pids=[proc.pid, *child_pids(proc.pid)],
        poll_url=f"{base}/lp/{CHANNEL}",
        poll_protocol="nchan",
        subscribe_template=f"{base}/sub/{{channel}}",
        publish_template=f"{base}/pub/{{channel}}",
        publish_format="raw",
    )


_FLOOR: dict[str, Path] = {}  # the floor's binary, built once per run


def build_floor() -> Path:
    """Compile floor.c (once per run) into a directory removed when the runner exits."""
    if "binary" in _FLOOR and _FLOOR["binary"].exists():
        return _FLOOR["binary"]
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise TargetError("no C compiler (cc) to build the floor; apt-get install gcc")
    out = Path(tempfile.mkdtemp(prefix="sse-bench-floor-")) / "floor"
    atexit.register(shutil.rmtree, out.parent, ignore_errors=True)
    done = subprocess.run([compiler, "-O2", "-o", str(out), str(BENCH / "floor.c")],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise TargetError(f"could not build floor.c: {done.stderr.strip()[-300:]}")
    _FLOOR["binary"] = out
    return out


def start_floor(svc: Services, python: str) -> Started:
    binary = build_floor()
    port = free_port()
    proc = svc.spawn("floor", [str(binary), str(port)])
    svc.wait_ready("floor", proc, lambda: http_probe(port))
    base = f"http://127.0.0.1:{port}"
    return Started(
        subscribe_url=f"{base}/sub/{CHANNEL}",
        publish_args=["--publish", "http-nchan", "--publish-url", f"{base}/pub/{CHANNEL}"],
        cpu_pids=[proc.pid],
        subscribe_template=f"{base}/sub/{{channel}}",
        publish_template=f"{base}/pub/{{channel}}",
        publish_format="raw",
    )


def start_flask_sse(svc: Services, python: str) -> Started:
    redis_port, redis_pid = start_redis(svc)
    port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = svc.spawn(
        "flask-sse",
        [
            python,
            "-m",
            "gunicorn",
            "--worker-class",
            "gevent",
            "--workers",
            "1",
            "--worker-connections",
            str(nofile),
            "--backlog",
            "4096",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--timeout",
            "120",
            "--chdir",
            str(BENCH),
            "flask_sse_app:app",
        ],
        env=dict(os.environ, REDIS_URL=redis_url),
    )
    svc.wait_ready("flask-sse", proc, lambda: http_probe(port))
    return Started(
        subscribe_url=f"http://127.0.0.1:{port}/stream?channel={CHANNEL}",
        publish_args=[
            "--publish",
            "redis",
            "--redis-url",
            redis_url,
            "--channel",
            CHANNEL,
            "--redis-envelope",
            "flask-sse",
        ],
        cpu_pids=[proc.pid, *child_pids(proc.pid), redis_pid],
    )


STARTERS: dict[str, Callable[[Services, str], Started]] = {
    "sse-gateway": start_gateway,
    "sse-gateway-x2": lambda svc, python: start_gateway(svc, python, workers=2),
    "sse-gateway-token": lambda svc, python: start_gateway(svc, python, token=True),
    "sse-gateway-cluster": lambda svc, python: start_gateway(svc, python, cluster=True),
    "nchan": start_nchan,
    "flask-sse": start_flask_sse,
    "floor": start_floor,
}


# --------------------------------------------------------------------------- one cell


@dataclass
class Plan:
    rate: float
    seconds: float
    drain: float = 5.0
    settle: float = 1.0
    quiet_wait: float = 0.0
    workload: str = "fanout"
    mode: str = ""  # publish: single or batch


def connect_budget(subscribers: int) -> float:
    return max(10.0, subscribers / 250)


@contextmanager
def cell_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def client_argv(started: Started, target: str, subscribers: int, plan: Plan,
                python: str) -> tuple[list[str], float]:
    """The workload's client for one cell, pinned to its core, and its time limit."""
    connect_timeout = connect_budget(subscribers)
    pids = [arg for pid in started.cpu_pids for arg in ("--server-pid", str(pid))]
    redis = ["--redis-url", started.redis_url] if started.redis_url else []
    head = ["taskset", "-c", str(LOADGEN_CORE), python]
    if plan.workload in PUBLISH_WORKLOADS:
        return publish_argv(started, target, subscribers, plan, head)
    if plan.workload == "storm":
        return [*head, str(BENCH / "storm.py"), "--url", started.subscribe_url,
                "--clients", str(subscribers), *started.publish_args, *redis, *pids,
                "--timeout", str(connect_timeout), "--label", target], 3 * connect_timeout + 20
    if plan.workload == "longpoll":
        if not started.poll_url:
            raise TargetError(f"{target} has no long-poll endpoint")
        timeout = connect_timeout + plan.settle + plan.seconds + plan.drain + 20
        return [*head, str(BENCH / "longpoll.py"), "--url", started.poll_url, "--protocol",
                started.poll_protocol, "--clients", str(subscribers), *started.publish_args,
                "--rate", str(plan.rate), "--duration", str(plan.seconds), "--drain",
                str(plan.drain), "--settle", str(max(plan.settle, 2.0)), "--timeout",
                str(connect_timeout), *redis, *pids, "--label", target], timeout
    timeout = connect_timeout + plan.settle + plan.seconds + plan.drain + 20
    argv = [
        *head,
        str(BENCH / "loadgen.py"),
        "--url",
        started.subscribe_url,
        "--subscribers",
        str(subscribers),
        *started.publish_args,
        "--rate",
        str(plan.rate),
        "--duration",
        str(plan.seconds),
        "--drain",
        str(plan.drain),
        "--settle",
        str(plan.settle),
        "--connect-timeout",
        str(connect_timeout),
        "--timeout",
        str(timeout),
        "--label",
        target,
        "--server-core",
        str(SERVER_CORE),
        *pids,
        *(["--token", started.token] if started.token else []),
    ]
    return argv, timeout


def publish_argv(started: Started, target: str, subscribers: int, plan: Plan,
                 head: list[str]) -> tuple[list[str], float]:
    """publish.py for one cell: single publishes (or one channel per subscriber) over HTTP,
    batched where the target takes batches, pipelined on one connection where it does not."""
    if not started.subscribe_template:
        raise TargetError(f"{target} has no {plan.workload} workload")
    mode = plan.mode if plan.workload == "publish" else "channels"
    servers = [pid for pid in started.cpu_pids
               if pid != started.redis_pid and pid not in started.cluster_pids]
    argv = [*head, str(BENCH / "publish.py"), "--mode", mode, "--label", target,
            "--url", started.subscribe_template, "--duration", str(plan.seconds),
            "--drain", str(plan.drain), "--settle", str(plan.settle),
            "--connect-timeout", str(connect_budget(subscribers)),
            "--server-core", str(SERVER_CORE),
            *[arg for pid in servers for arg in ("--server-pid", str(pid))]]
    if started.redis_pid:
        argv += ["--redis-pid", str(started.redis_pid), "--redis-url", started.redis_url]
    for pid in started.cluster_pids:  # their CPU apart; history is checked on one Redis only
        argv += ["--redis-pid", str(pid)]
    if mode != "single" and started.batch_url:
        argv += ["--publish", "gateway-batch", "--publish-url", started.batch_url,
                 "--batch", "500" if mode == "batch" else "100", "--window", "4"]
    else:
        argv += ["--publish", started.publish_format, "--publish-url", started.publish_template,
                 "--window", "64"]
    if mode != "batch":
        argv += ["--subscribers", str(subscribers), "--rate", f"{plan.rate:g}"]
    return argv, connect_budget(subscribers) + plan.settle + plan.seconds + plan.drain + 30


def run_cell(target: str, subscribers: int, plan: Plan, python: str) -> dict[str, object]:
    row: dict[str, object] = {"target": target, "subscribers": subscribers}
    if plan.workload != "fanout":
        row["workload"] = plan.workload
    row["busy_cores_before"] = round(wait_quiet(plan.quiet_wait), 2)
    row["tcp_metrics_forgotten"] = forget_tcp_metrics()
    with cell_dir() as workdir:
        svc = Services(workdir)
        try:
            started = STARTERS[target](svc, python)
            argv, timeout = client_argv(started, target, subscribers, plan, python)
            try:
                done = subprocess.run(
                    argv,
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=timeout + 45,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=die_with_runner(),
                )
            except subprocess.TimeoutExpired as exc:
                raise TargetError("the client did not exit in time") from exc
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if not lines:
                raise TargetError(f"the client printed no result: {done.stderr.strip()[-300:]}")
            row.update(json.loads(lines[-1]))
            for name, proc in svc.procs:
                if proc.poll() is not None:
                    row.setdefault("error", f"{name} died during the run: {svc.log_tail(name)}")
        except TargetError as exc:
            row["error"] = str(exc)
        finally:
            svc.stop()
    return row


# --------------------------------------------------------------------------- report


COLUMNS = (
    # header, key, format
    ("target", "target", "{}"),
    ("N", "subscribers", "{}"),
    ("conn", "connected", "{}"),
    ("fail", "failed", "{}"),
    ("conn s", "connect_seconds", "{:.2f}"),
    ("conn ms/sub", "connect_cpu_ms_per_subscriber", "{:.2f}"),
    ("delivered", "delivered", "{}"),
    ("expected", "expected", "{}"),
    ("loss %", "loss", "pct"),
    ("deliv/s", "deliveries_per_s", "{:.0f}"),
    ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"),
    ("max ms", "latency_max_ms", "{:.1f}"),
    ("CPU s/1k", "cpu_s_per_1k", "{:.4f}"),
    ("core s/1k", "core_cpu_s_per_1k", "{:.4f}"),
    ("RSS MB", "server_rss_mb", "{:.0f}"),
    ("KB/sub", "idle_kb_per_subscriber", "{:.1f}"),
    ("gen CPU s", "loadgen_cpu_s", "{:.1f}"),
    ("bg CPU s", "background_cpu_s", "{:.1f}"),
)

RATIOS = (
    ("CPU/1k", "cpu_s_per_1k"),
    ("core/1k", "core_cpu_s_per_1k"),
    ("p99", "latency_p99_ms"),
    ("KB/sub", "idle_kb_per_subscriber"),
    ("deliv/s", "deliveries_per_s"),
)

STORM_COLUMNS = (
    ("target", "target", "{}"),
    ("N", "subscribers", "{}"),
    ("ok", "ok", "{}"),
    ("headers", "headers_ok", "{}"),
    ("serve s", "serve_seconds", "{:.2f}"),
    ("p50 ms", "serve_p50_ms", "{:.0f}"),
    ("p99 ms", "serve_p99_ms", "{:.0f}"),
    ("CPU s", "server_cpu_s", "{:.2f}"),
    ("CPU ms/client", "cpu_ms_per_client", "{:.3f}"),
    ("Redis cmds", "redis_command_total", "{}"),
    ("XRANGE", "redis_commands.xrange", "{}"),
)

STORM_RATIOS = (("serve s", "serve_seconds"), ("CPU", "server_cpu_s"))

LONGPOLL_COLUMNS = (
    ("target", "target", "{}"),
    ("N", "subscribers", "{}"),
    ("R", "rate", "{:g}"),
    ("delivered", "delivered", "{}"),
    ("expected", "expected", "{}"),
    ("loss %", "loss", "pct"),
    ("polls", "polls", "{}"),
    ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"),
    ("CPU s/1k", "cpu_s_per_1k", "{:.4f}"),
    ("Redis cmds", "redis_command_total", "{}"),
    ("XRANGE", "redis_commands.xrange", "{}"),
)

LONGPOLL_RATIOS = (("CPU/1k", "cpu_s_per_1k"), ("p99", "latency_p99_ms"))

PUBLISH_COLUMNS = (
    ("target", "target", "{}"),
    ("mode", "mode", "{}"),
    ("N", "subscribers", "{}"),
    ("R", "rate", "{:g}"),
    ("batch", "batch", "{}"),
    ("accepted", "accepted", "{}"),
    ("ev/s", "events_per_s", "{:.0f}"),
    ("delivered", "delivered", "{}"),
    ("expected", "expected", "{}"),
    ("loss %", "loss", "pct"),
    ("p50 ms", "latency_p50_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"),
    ("ack p99 ms", "ack_p99_ms", "{:.1f}"),
    ("CPU us/ev", "cpu_us_per_event", "{:.1f}"),
    ("server", "server_cpu_us_per_event", "{:.1f}"),
    ("Redis", "redis_cpu_us_per_event", "{:.1f}"),
    ("core us/ev", "core_us_per_event", "{:.1f}"),
    ("order", "order_violations", "{}"),
    ("hist bad", "history_channels_wrong", "{}"),
    ("gen CPU s", "loadgen_cpu_s", "{:.1f}"),
    ("bg CPU s", "background_cpu_s", "{:.1f}"),
)

PUBLISH_RATIOS = (("CPU/ev", "cpu_us_per_event"), ("core/ev", "core_us_per_event"),
                  ("p99", "latency_p99_ms"), ("ev/s", "events_per_s"))

TABLES = {
    "fanout": (COLUMNS, RATIOS),
    "storm": (STORM_COLUMNS, STORM_RATIOS),
    "longpoll": (LONGPOLL_COLUMNS, LONGPOLL_RATIOS),
    "publish": (PUBLISH_COLUMNS, PUBLISH_RATIOS),
    "channels": (PUBLISH_COLUMNS, PUBLISH_RATIOS),
}


def lookup(row: dict[str, object], key: str) -> object:
    """row[key]; a dotted key looks inside a nested object (redis_commands.xrange)."""
    value: object = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def cell(row: dict[str, object], key: str, fmt: str) -> str:
    value = lookup(row, key)
    if value is None or value == "":
        return "-"
    if fmt == "pct":
        return f"{float(value) * 100:.2f}"  # type: ignore[arg-type]
    return fmt.format(value)


def render_table(rows: list[dict[str, object]], workload: str = "fanout") -> str:
    columns, ratios = TABLES[workload]
    table = [[c[0] for c in columns]]
    errors = []
    for row in rows:
        table.append([cell(row, key, fmt) for _, key, fmt in columns])
        where = f"  {row['target']} N={row['subscribers']}: "
        if row.get("error"):
            errors.append(where + str(row["error"]))
        errors.extend(where + w for w in warnings(row))
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ratio_lines = render_ratios(rows, ratios)
    if ratio_lines:
        lines += [
            "",
            "ratios vs nchan at the same N (x1.00 = same; CPU and p99: lower is better)",
            *ratio_lines,
        ]
    if errors:
        lines += ["", "errors and warnings:", *errors]
    return "\n".join(lines)


def render_markdown(rows: list[dict[str, object]], workload: str = "fanout") -> str:
    """The table and the ratios to nchan as Markdown, for the README."""
    columns, ratio_keys = TABLES[workload]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |"]
    lines.append("| --- " * len(columns) + "|")
    for row in rows:
        values = [cell(row, key, fmt) for _, key, fmt in columns]
        if row.get("error"):
            values[2:] = ["error: " + str(row["error"])[:80]] + [""] * (len(columns) - 3)
        lines.append("| " + " | ".join(values) + " |")
    ratios = render_ratios(rows, ratio_keys)
    if ratios:
        lines += ["", "Ratios to nchan at the same N:", "", "```", *ratios, "```"]
    return "\n".join(lines)


def report(paths: list[Path]) -> int:
    """Print Markdown tables from earlier runs' JSON lines; rows of later files win."""
    cells: dict[tuple[object, ...], dict[str, object]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "meta" in row:
                meta = row["meta"]
                print(f"<!-- {path.name}: {meta.get('date')}, {meta.get('nproc')} x {meta.get('cpu')} -->")
            else:
                cells[(row.get("workload", "fanout"), *cell_key(row))] = row
    order = {name: i for i, name in enumerate(ALL_TARGETS + EXTRA_TARGETS)}
    for workload in WORKLOADS:
        rows = sorted((r for r in cells.values() if r.get("workload", "fanout") == workload),
                      key=lambda r: (order.get(str(r["target"]), 99), str(r.get("mode", "")),
                                     r["subscribers"], float(r.get("rate") or 0)))
        if rows:
            if workload != "fanout":
                print(f"\n{workload}:\n")
            print(render_markdown(rows, workload))
    return 0


def background_share(row: dict[str, object]) -> float:
    """Other processes' CPU as a share of the measured window (0 = a quiet machine)."""
    phase, background = row.get("phase_seconds"), row.get("background_cpu_s")
    if isinstance(phase, (int, float)) and isinstance(background, (int, float)) and phase > 0:
        return background / phase
    return 0.0


def busy_run(row: dict[str, object]) -> bool:
    return background_share(row) > 0.1


def warnings(row: dict[str, object]) -> list[str]:
    """Reasons to distrust a row's figures."""
    out = []
    phase = row.get("phase_seconds")
    if not isinstance(phase, (int, float)) or phase <= 0:
        return out
    background = row.get("background_cpu_s")
    if isinstance(background, (int, float)) and busy_run(row):
        out.append(
            f"other processes used {background:.1f} CPU-s of the {phase:.0f} s measured: "
            "figures are suspect, rerun on a quiet machine"
        )
    gen = row.get("loadgen_cpu_s")
    if isinstance(gen, (int, float)) and gen > 0.85 * phase:
        out.append(f"the load generator used {gen / phase:.0%} of its core: it may be the bottleneck")
    if row.get("tcp_metrics_forgotten") is False:
        out.append("the kernel's TCP metrics for 127.0.0.1 could not be dropped (needs root and "
                   "iproute2): this cell started from what the previous one left")
    late = row.get("late_subscribers")
    if late:
        out.append(f"{late} subscribers got their headers only after publishing began (not measured)")
    return out


def cell_key(row: dict[str, object]) -> tuple[object, ...]:
    """What one cell of a table measured, whichever server: N, and the mode and rate."""
    return row["target"], row["subscribers"], row.get("mode", ""), row.get("rate")


def render_ratios(rows: list[dict[str, object]],
                  ratios: tuple[tuple[str, str], ...] = RATIOS) -> list[str]:
    base = {cell_key(r)[1:]: r for r in rows if r["target"] == "nchan" and not r.get("error")}
    out = []
    for row in rows:
        ref = base.get(cell_key(row)[1:])
        if ref is None or row["target"] == "nchan":
            continue
        parts = []
        for label, key in ratios:
            mine, theirs = row.get(key), ref.get(key)
            if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs > 0:
                parts.append(f"{label} x{mine / theirs:.2f}")
            else:
                parts.append(f"{label} -")
        what = f"{row['mode']} R={row.get('rate', 0):g} " if row.get("mode") else ""
        out.append(f"  {row['target']:<12} {what}N={row['subscribers']:<6} " + "  ".join(parts))
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=WORKLOADS, default="fanout",
                   help="fanout (open streams), storm (reconnect storm), longpoll, publish "
                   "(publish cost, then batches) or channels (one channel per subscriber)")
    p.add_argument(
        "--targets",
        help=f"comma-separated, from {', '.join(ALL_TARGETS + EXTRA_TARGETS)} (default: "
        + "; ".join(f"{w}: {','.join(d[0])}" for w, d in WORKLOAD_DEFAULTS.items()) + ")",
    )
    p.add_argument("--subscribers", help="comma-separated N values (default: "
                   + "; ".join(f"{w}: {d[1]}" for w, d in WORKLOAD_DEFAULTS.items()) + ")")
    p.add_argument("--rate", help="published events per second, comma-separated for several "
                   "cells (default: " + "; ".join(f"{w}: {d[2]}" for w, d in
                                                   WORKLOAD_DEFAULTS.items() if w != "storm")
                   + ")")
    p.add_argument("--seconds", type=float, default=10.0, help="publish phase length")
    p.add_argument("--out", type=Path, help="JSON lines file (default benchmarks/results/)")
    p.add_argument(
        "--python",
        help="interpreter for servers and loadgen (default: benchmarks/.venv, created on demand)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each cell, wait up to this many seconds for other processes "
        "to leave the cores idle (the busy reading is recorded either way)",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=1,
        help="run a cell up to this many times while other processes disturb it; keep the least disturbed",
    )
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="JSONL",
        help="run nothing: print earlier results as Markdown (later files replace a cell)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI check, short: fanout (the gateway alone, N=100, 3 s), publish or channels "
        "(the gateway and the floor, a few seconds); exit 1 unless all delivered, in order",
    )
    args = p.parse_args(argv)
    targets, subscribers, rate = WORKLOAD_DEFAULTS[args.workload]
    if args.smoke:
        if args.workload not in SMOKE:
            p.error(f"--smoke runs the {', '.join(SMOKE)} workloads")
        targets, subscribers, rate, args.seconds = SMOKE[args.workload]
        args.targets = args.subscribers = args.rate = None
    args.targets = [t.strip() for t in (args.targets or ",".join(targets)).split(",") if t.strip()]
    args.subscribers = args.subscribers or subscribers
    args.rates = [float(r) for r in (args.rate or rate).split(",") if r.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS + EXTRA_TARGETS)
    if unknown:
        p.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.workload != "fanout" and "flask-sse" in args.targets:
        p.error(f"flask-sse has no {args.workload} workload: it neither resumes, long-polls "
                "nor takes publishes over HTTP")
    if args.workload in ("storm", "longpoll") and "floor" in args.targets:
        p.error(f"the floor has no {args.workload} workload: it only fans out")
    args.subscribers = [int(n) for n in args.subscribers.split(",") if n.strip()]
    return args


def cells(args: argparse.Namespace) -> list[tuple[str, int, float, str]]:
    """(target, N, rate, mode) of every cell, in order; publish adds a batch cell per target."""
    out = []
    for target in args.targets:
        modes = ["single"] if args.workload == "publish" else [""]
        out += [(target, n, rate, mode) for mode in modes for n in args.subscribers
                for rate in args.rates]
        if args.workload == "publish":
            out.append((target, 0, 0.0, "batch"))
    return out


def summary(row: dict[str, object], workload: str) -> str:
    if row.get("error"):
        return str(row["error"])
    if workload == "storm":
        return (f"{row.get('ok')}/{row['subscribers']} served in {row.get('serve_seconds')} s, "
                f"{row.get('redis_command_total', '-')} Redis commands")
    if workload in PUBLISH_WORKLOADS:
        return (f"{row.get('accepted')} events at {row.get('events_per_s')}/s, delivered "
                f"{row.get('delivered')}/{row.get('expected')}, p99 {row.get('latency_p99_ms')} "
                f"ms, CPU {row.get('cpu_us_per_event')} us/event")
    return (f"delivered {row.get('delivered')}/{row.get('expected')}, "
            f"p99 {row.get('latency_p99_ms')} ms, CPU s/1k {row.get('cpu_s_per_1k')}")


def smoke_passed(rows: list[dict[str, object]], workload: str) -> bool:
    """Every cell ran; everything published was delivered, in order, and kept in history."""
    if workload == "fanout":
        row = rows[0]
        return not row.get("error") and row.get("connected") == 100 and row.get("loss") == 0
    return all(not row.get("error") and row.get("accepted") and not row.get("refused")
               and row.get("order_violations") == 0 and not row.get("history_channels_wrong")
               and (row.get("mode") == "batch" or (row.get("loss") == 0 and not row.get("reordered")))
               for row in rows)


def choose_python(args: argparse.Namespace) -> str:
    if args.python:
        return args.python
    # The smoke needs only the gateway's own dependencies: use this interpreter if it has them,
    # so CI does not build a virtualenv.
    if args.smoke and can_import(sys.executable, "flask", "gevent", "redis"):
        return sys.executable
    return str(ensure_venv())


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cell's cleanup


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    signal.signal(signal.SIGTERM, on_sigterm)
    for tool in ("taskset", "redis-server", "nginx"):
        if shutil.which(tool) is None and (tool != "nginx" or "nchan" in args.targets):
            log(f"error: {tool} not found")
            return 2
    nofile = raise_fd_limit()
    python = choose_python(args)
    plan = Plan(rate=args.rates[0], seconds=args.seconds, quiet_wait=args.quiet_wait,
                workload=args.workload)
    if args.smoke:
        plan.drain, plan.settle = 2.0, 0.5
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or BENCH / "results" / f"run-{stamp}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = machine_facts(python)
    meta.update(workload=args.workload, rate=",".join(f"{r:g}" for r in args.rates),
                seconds=args.seconds, nofile=nofile, python_path=python)
    log(f"{meta['date']}  {meta['nproc']} cores  {meta['cpu']}  RLIMIT_NOFILE={nofile}")
    rows: list[dict[str, object]] = []
    with open(out, "w") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for target, n, rate, mode in cells(args):
            cell_plan = replace(plan, rate=rate, mode=mode)
            log(f"-- {target} {mode + ' ' if mode else ''}N={n} R={rate:g} ...")
            row = run_cell(target, n, cell_plan, python)
            for _ in range(args.attempts - 1):
                if row.get("error") or not busy_run(row):
                    break
                log("   the machine was busy during the run: again ...")
                again = run_cell(target, n, cell_plan, python)
                if not again.get("error") and background_share(again) < background_share(row):
                    row = again
            rows.append(row)
            f.write(json.dumps(row) + "\n")
            f.flush()
            log(f"   {summary(row, args.workload)}")
    print(render_table(rows, args.workload))
    print(f"\nJSON lines: {out}")
    if args.smoke:
        return 0 if smoke_passed(rows, args.workload) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
