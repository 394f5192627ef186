"""A real Redis Cluster for the tests: 3 masters and 3 replicas on loopback, and what the tests
do to it (find a node, kill a master, migrate a slot)."""

import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Dict, List, Optional, Tuple

import pytest
import redis
from child_processes import die_with_parent
from conftest import free_port, wait_until
from redis.crc import key_slot


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free too."""
    for _ in range(1000):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise AssertionError("no free port pair for a cluster node")


class RedisCluster:
    def __init__(self, masters: int = 3, replicas: int = 1, full_coverage: bool = True,
                 password: Optional[str] = None) -> None:
        """`full_coverage`: whether the nodes refuse every command while a slot has no master
        (Redis's default), else they serve the slots that have one. `password`: every node
        asks its clients for it (requirepass), and replicas give it to their masters."""
        self.size = masters * (1 + replicas)
        self.full_coverage = full_coverage
        self.password = password
        self.masters = masters
        self.replicas = replicas
        self.ports = [cluster_port() for _ in range(self.size)]
        self.dir = tempfile.mkdtemp(prefix="sse-gateway-cluster-")
        self.procs: Dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """Two seed nodes, as --redis-url takes them."""
        return self.url_with(self.password)

    def url_with(self, password: Optional[str]) -> str:
        """The seed nodes' URL with `password` in it (none if None)."""
        auth = f":{password}@" if password is not None else ""
        return ",".join(f"redis://{auth}127.0.0.1:{port}" for port in self.ports[:2])

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            pytest.fail("redis-server and redis-cli are not installed; run the README's test command")
        for port in self.ports:
            self.procs[port] = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", f"{self.dir}/nodes-{port}.conf",
                 "--cluster-node-timeout", "1000",
                 "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
                 "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--protected-mode", "no",
                 *(["--requirepass", self.password, "--masterauth", self.password]
                   if self.password is not None else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())
        for port in self.ports:
            wait_until(lambda p=port: self._pings(p), 10, message=f"redis-server :{port} to start")
        subprocess.run(
            ["redis-cli", *(["-a", self.password, "--no-auth-warning"] if self.password else []),
             "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
            preexec_fn=die_with_parent())
        self.wait_ok()
        # Every replica has synchronised with its master: no test begins with a failover.
        wait_until(self._replicas_in_sync, 20, message="the replicas to sync")

    def _pings(self, port: int) -> bool:
        try:
            return self.node(port).ping()
        except redis.RedisError:
            return False

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=5,
                           socket_connect_timeout=2)

    def alive(self) -> List[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says cluster_state:ok and agrees on the masters."""
        def ok() -> bool:
            try:
                for port in self.alive():
                    if self.node(port).cluster("info")["cluster_state"] != "ok":
                        return False
                    if len(self.slot_owners(port)) != self.masters:
                        return False
                return True
            except redis.RedisError:
                return False
        wait_until(ok, timeout, 0.05, message="the cluster to be ok on every node")

    def wait_failover(self, dead: int, timeout: float = 30) -> None:
        """Until every live node has a replica in the place of the dead master on port `dead`."""
        def done() -> bool:
            try:
                return all(dead not in self.slot_owners(port) for port in self.alive())
            except redis.RedisError:
                return False
        wait_until(done, timeout, 0.05, message=f"a replica to take over from :{dead}")
        self.wait_ok(timeout)

    def _replicas_in_sync(self) -> bool:
        for port in self.alive():
            info = self.node(port).info("replication")
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def slot_owners(self, port: Optional[int] = None) -> Dict[int, List[Tuple[int, int]]]:
        """Master port -> its slot ranges, as node `port` (any live one) sees them."""
        port = port or self.alive()[0]
        owners: Dict[int, List[Tuple[int, int]]] = {}
        for start, end, master, *_ in self.node(port).execute_command("CLUSTER", "SLOTS"):
            owners.setdefault(int(master[1]), []).append((int(start), int(end)))
        return owners

    def master_of(self, slot: int) -> int:
        for master, ranges in self.slot_owners().items():
            if any(start <= slot <= end for start, end in ranges):
                return master
        raise AssertionError(f"no master owns slot {slot}")

    def master_ports(self) -> List[int]:
        return sorted(self.slot_owners())

    def node_id(self, port: int) -> str:
        return self.node(port).execute_command("CLUSTER", "MYID").decode()

    def flush(self) -> None:
        for port in self.master_ports():
            self.node(port).flushall()

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(5)

    def migrate_slot(self, slot: int, target: int, keys_batch: int = 100) -> None:
        """Move a slot and its keys to the master on port `target`, as redis-cli --cluster
        reshard does: IMPORTING, MIGRATING, MIGRATE the keys, then SETSLOT NODE everywhere."""
        source = self.master_of(slot)
        source_node, target_node = self.node(source), self.node(target)
        target_id = self.node_id(target)
        target_node.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source_node.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for _ in range(10000):
            keys = source_node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, keys_batch)
            if not keys:
                break
            source_node.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000,
                                        "KEYS", *keys)
        # The target first, then the source, then the other masters (as redis-cli does).
        for port in [target, source] + [p for p in self.master_ports() if p not in (target, source)]:
            self.node(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        wait_until(lambda: all(self._owner_seen(p, slot, target) for p in self.alive()), 10,
                   message=f"every node to see slot {slot} on :{target}")

    def _owner_seen(self, port: int, slot: int, target: int) -> bool:
        try:
            return self.master_of_seen_by(port, slot) == target
        except redis.RedisError:
            return False

    def master_of_seen_by(self, port: int, slot: int) -> Optional[int]:
        for master, ranges in self.slot_owners(port).items():
            if any(start <= slot <= end for start, end in ranges):
                return master
        return None

    def pubsub_clients(self, port: int) -> List[str]:
        """The names of the gateways' pub/sub connections on node `port`."""
        return [client["name"] for client in self.node(port).client_list()
                if client["name"].startswith("sse-gateway-pubsub")]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def slot_of(channel: str) -> int:
    """The hash slot of a channel's names on a cluster (its hash tag is the channel)."""
    return key_slot(channel.encode("utf-8"))


def channels_on_every_shard(cluster: RedisCluster, per_shard: int, stem: str = "c") -> List[str]:
    """`per_shard` channel names on each master."""
    wanted = {port: [] for port in cluster.master_ports()}
    for number in range(10000):
        name = f"{stem}{number}"
        owner = cluster.master_of(slot_of(name))
        if len(wanted[owner]) < per_shard:
            wanted[owner].append(name)
        if all(len(names) == per_shard for names in wanted.values()):
            break
    return [name for names in wanted.values() for name in names]

