#!/usr/bin/env python3
"""Server CPU per long-poll answer, from one client polling in a loop on one connection.

Starts redis-server and one gateway process of the tree given (pinned to core 0), publishes
one event, then sends `GET /poll/bench?timeout=0&lastEventId=<that event>` again and again on
one kept-alive connection (each answered at once, with no event: a poll that keeps up, opened
at the channel's last event) and prints the gateway's CPU (utime + stime) per answer. No load
but this one client, so it measures the cost of a request and its answer, without the
batching that a saturated process does. Run this script pinned to another core:

    taskset -c 1 python3 benchmarks/pollcost.py --tree /path/to/tree --polls 20000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WARM_UP = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, return its body (the response has a Content-Length)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return body


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(BENCH.parent), help="the gateway's source tree")
    parser.add_argument("--polls", type=int, default=20000)
    parser.add_argument("--python", default=str(BENCH / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(redis_port),
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", args.python, "-m", "gateway", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
         "--log-level", "warning"], env=dict(os.environ, PYTHONPATH=args.tree), cwd=args.tree)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("the gateway did not start")
                time.sleep(0.1)
        time.sleep(1)  # the broker connects
        body = b'{"data": "x"}'
        event = json.loads(exchange(sock, b"POST /publish/bench HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Type: application/json\r\nContent-Length: %d"
                                    b"\r\n\r\n%s" % (len(body), body)))["id"]
        request = (b"GET /poll/bench?timeout=0&lastEventId=%s HTTP/1.1\r\nHost: 127.0.0.1:%d"
                   b"\r\n\r\n" % (event.encode(), port))
        for _ in range(WARM_UP):
            exchange(sock, request)
        cpu, wall = cpu_seconds(gateway.pid), time.monotonic()
        for _ in range(args.polls):
            exchange(sock, request)
        cpu, wall = cpu_seconds(gateway.pid) - cpu, time.monotonic() - wall
        print(json.dumps({"tree": args.tree, "polls": args.polls,
                          "server_us_per_answer": round(cpu / args.polls * 1e6, 1),
                          "wall_us_per_answer": round(wall / args.polls * 1e6, 1)}))
    finally:
        gateway.terminate()
        redis.terminate()
        gateway.wait(10)
        redis.wait(10)


if __name__ == "__main__":
    main()
