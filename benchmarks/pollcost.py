#!/usr/bin/env python3
"""Server CPU per long-poll answer, from one client polling in a loop on one connection.

Starts redis-server and one gateway process of the tree given (pinned to core 0), publishes
one event, then sends `GET /poll/bench?timeout=0&lastEventId=<that event>` again and again on
one kept-alive connection (each answered at once, with no event: a poll that keeps up, opened
at the channel's last event) and prints the gateway's CPU (utime + stime) per answer. No load
but this one client, so it measures the cost of a request and its answer, without the
batching that a saturated process does. Run this script pinned to another core:

    taskset -c 1 python3 benchmarks/pollcost.py --tree /path/to/tree --polls 20000

With `--clients N --rate R`, N connections poll instead, paced to R answers/s in all (each
client polls again on its answer, but no sooner than N/R s after its last poll), for
`--seconds`: the cost of an answer in a process that serves many clients at once and batches
what each loop turn finds ready, as in the long-poll workload, with the request-to-answer
latency. `--floor` serves the same clients with a bare gevent StreamServer instead, which
answers every request with a fixed 2-byte JSON response (recv, then sendall): the least an
answer costs in Python with gevent on this machine, whatever the server does.

With `--held N`, N connections hold a poll each instead, and `--rounds` times one event is
published, every poll answers with it and polls again, and the round ends once all N are held
again: the gateway's CPU per held poll answered, and the time from the publish to the last
answer, with no load but these clients (the gateway only).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WARM_UP = 2000
# The floor: a gevent server that answers every read with the same response, nothing else.
FLOOR = """
import sys, gevent.server
RESPONSE = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 2\\r\\n\\r\\n{}"
def handle(sock, address):
    while sock.recv(65536):
        sock.sendall(RESPONSE)
gevent.server.StreamServer(("127.0.0.1", int(sys.argv[1])), handle).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, return its body (the response has a Content-Length)."""
    sock.sendall(request)
    return read_body(sock)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.1)


def ping_pong(sock: socket.socket, request: bytes, polls: int, pid: int) -> dict:
    """One client, answers in a loop: server CPU and wall time per answer."""
    for _ in range(WARM_UP):
        exchange(sock, request)
    cpu, wall = cpu_seconds(pid), time.monotonic()
    for _ in range(polls):
        exchange(sock, request)
    cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - wall
    return {"polls": polls, "server_us_per_answer": round(cpu / polls * 1e6, 1),
            "wall_us_per_answer": round(wall / polls * 1e6, 1)}


class _Client:
    __slots__ = ("index", "sock", "data", "sent_at")

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.data = b""
        self.sent_at = 0.0


def _answered(data: bytes) -> int:
    """The length of the whole response at the start of `data`, or 0 if it is not all there."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = data[:end].lower()
    at = head.index(b"content-length:") + len(b"content-length:")
    line_end = head.find(b"\r\n", at)
    length = int(head[at:line_end if line_end >= 0 else None])
    total = end + 4 + length
    return total if len(data) >= total else 0


def paced(port: int, request: bytes, clients: int, rate: float, seconds: float,
          pid: int) -> dict:
    """`clients` connections, each polling again on its answer but no sooner than
    clients / rate seconds after its last poll, for `seconds` (after a second of warm-up)."""
    interval = clients / rate
    selector = selectors.DefaultSelector()
    conns = []
    for index in range(clients):
        sock = connect(port)
        sock.setblocking(False)
        conns.append(_Client(index, sock))
        selector.register(sock, selectors.EVENT_READ, conns[-1])
    start = time.monotonic()
    due = [(start + interval * i / clients, i) for i in range(clients)]
    heapq.heapify(due)
    measure_at, end = start + 1.0, start + 1.0 + seconds
    cpu = None
    latencies = []
    answers = 0
    while True:
        now = time.monotonic()
        if cpu is None and now >= measure_at:
            cpu, measure_at = cpu_seconds(pid), now
        if now >= end:
            break
        while due and due[0][0] <= now:
            client = conns[heapq.heappop(due)[1]]
            client.sent_at = now
            client.sock.send(request)
        timeout = max(0.0, min(due[0][0] if due else end, end) - now)
        for key, _ in selector.select(timeout):
            client = key.data
            client.data += client.sock.recv(65536)
            length = _answered(client.data)
            if not length:
                continue
            client.data = client.data[length:]
            now = time.monotonic()
            if cpu is not None:
                answers += 1
                latencies.append(now - client.sent_at)
            heapq.heappush(due, (max(now, client.sent_at + interval), client.index))
    spent = cpu_seconds(pid) - cpu
    wall = time.monotonic() - measure_at
    latencies.sort()
    for client in conns:
        client.sock.close()

    def percentile(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) \
            if latencies else 0.0
    return {"clients": clients, "rate": rate, "answers_per_s": round(answers / wall),
            "server_us_per_answer": round(spent / max(answers, 1) * 1e6, 1),
            "server_cpu_share": round(spent / wall, 3),
            "latency_p50_ms": percentile(0.5), "latency_p99_ms": percentile(0.99)}


def held_rounds(port: int, channel_cursor: str, held: int, rounds: int, pid: int) -> dict:
    """`held` polls answered by one event, `rounds` times (see the module's docstring)."""
    request = b"GET /poll/bench?timeout=25&lastEventId=%s HTTP/1.1\r\nHost: x\r\n\r\n"
    publisher = connect(port)
    body = b'{"data": "x"}'
    publish = (b"POST /publish/bench HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    clients = [connect(port) for _ in range(held)]
    cursor = channel_cursor.encode()

    def all_held() -> None:
        deadline = time.monotonic() + 30
        while json.loads(exchange(publisher, health))["subscribers"] < held:
            if time.monotonic() > deadline:
                sys.exit("the polls were not held")
            time.sleep(0.02)  # each look costs the gateway a little: not too often

    for sock in clients:
        sock.sendall(request % cursor)
    all_held()
    spent, answered, lasts = 0.0, 0, []
    for _ in range(rounds):
        cpu, start = cpu_seconds(pid), time.monotonic()
        cursor = json.loads(exchange(publisher, publish))["id"].encode()
        for sock in clients:
            answered += len(json.loads(read_body(sock))["events"])
        lasts.append(time.monotonic() - start)
        for sock in clients:
            sock.sendall(request % cursor)
        all_held()
        spent += cpu_seconds(pid) - cpu
    lasts.sort()
    return {"held": held, "rounds": rounds, "answered": answered,
            "server_us_per_answer": round(spent / answered * 1e6, 1),
            "last_answer_ms_median": round(lasts[len(lasts) // 2] * 1000, 2)}


def read_body(sock: socket.socket) -> bytes:
    """The body of the next response on `sock` (one with a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(BENCH.parent), help="the gateway's source tree")
    parser.add_argument("--polls", type=int, default=20000, help="one client: answers measured")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--rate", type=float, default=10000.0,
                        help="with --clients: answers per second, in all")
    parser.add_argument("--seconds", type=float, default=5.0, help="with --clients")
    parser.add_argument("--held", type=int, default=0, help="held polls answered by an event")
    parser.add_argument("--rounds", type=int, default=20, help="with --held")
    parser.add_argument("--floor", action="store_true",
                        help="measure the bare gevent server, not the gateway")
    parser.add_argument("--python", default=str(BENCH / ".venv" / "bin" / "python"))
    args = parser.parse_args()
    redis_port, port = free_port(), free_port()
    redis = gateway = None
    if args.floor:
        gateway = subprocess.Popen(["taskset", "-c", "0", args.python, "-c", FLOOR, str(port)])
        sock = connect(port)
        request = b"GET /poll/bench?timeout=0&lastEventId=1-0 HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        redis = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(redis_port),
                                  "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        gateway = subprocess.Popen(
            ["taskset", "-c", "0", args.python, "-m", "gateway", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
             "--log-level", "warning"], env=dict(os.environ, PYTHONPATH=args.tree), cwd=args.tree)
    try:
        if not args.floor:
            sock = connect(port)
            time.sleep(1)  # the broker connects
            body = b'{"data": "x"}'
            event = json.loads(exchange(sock, b"POST /publish/bench HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Type: application/json\r\nContent-Length: %d"
                                        b"\r\n\r\n%s" % (len(body), body)))["id"]
            request = (b"GET /poll/bench?timeout=0&lastEventId=%s HTTP/1.1\r\n"
                       b"Host: 127.0.0.1:%d\r\n\r\n" % (event.encode(), port))
        target = {"target": "floor" if args.floor else "sse-gateway", "tree": args.tree}
        if args.held and not args.floor:
            sock.close()
            result = held_rounds(port, event, args.held, args.rounds, gateway.pid)
        elif args.clients > 1:
            sock.close()
            result = paced(port, request, args.clients, args.rate, args.seconds, gateway.pid)
        else:
            result = ping_pong(sock, request, args.polls, gateway.pid)
        print(json.dumps({**target, **result}))
    finally:
        for process in (gateway, redis):
            if process is not None:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
