"""A real local Redis Cluster for tests: six redis-server processes, three masters and three
replicas, created with `redis-cli --cluster create` and torn down afterwards."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FIRST_PORT = os.environ.get("JB_TEST_CLUSTER_PORT")  # default: a free block of ports
NODES = 6  # three masters, each with one replica
READY_TIMEOUT = 30.0


class ClusterUnavailable(RuntimeError):
    """redis-server or redis-cli is missing, or the cluster did not form."""


@dataclass
class LocalCluster:
    """Six redis-server processes under one temporary directory."""

    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """One node's URL: the client discovers the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                "redis-server",
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                "--appendonly", "no",
                "--logfile", str(node_dir / "redis.log"),
                "--save", "",
                "--dir", str(node_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self, port: int) -> None:
        """kill -9 one node, as a crash would."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot now (asked of a running node)."""
        asked = min(self.processes)
        slot = int(_cli(asked, "cluster", "keyslot", key))
        for line in _cli(asked, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" not in parts[2] or "fail" in parts[2]:
                continue
            for span in parts[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(parts[1].split(":")[1].split("@")[0])
        raise LookupError(f"no master serves slot {slot}")

    def wait_replicated(self, port: int) -> None:
        """Until the replicas of the master on `port` have every write it took so far
        (replication is asynchronous: a master killed at once may take its last writes with
        it). Writes that go on meanwhile are not waited for."""

        def replication() -> dict[str, str]:
            lines = _cli(port, "info", "replication").splitlines()
            return dict(line.split(":", 1) for line in lines if ":" in line)

        target = int(replication()["master_repl_offset"])

        def caught_up() -> bool:
            replicas = [v for k, v in replication().items() if k[:5] == "slave" and k[5:].isdigit()]
            acked = [int(dict(p.split("=") for p in v.split(","))["offset"]) for v in replicas]
            return bool(acked) and all(offset >= target for offset in acked)

        _wait(caught_up, f"the replicas of {port} to catch up")

    def stop(self) -> None:
        for port in list(self.processes):
            with contextlib.suppress(Exception):
                self.kill(port)


def _cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _synced(port: int) -> bool:
    """A master, or a replica whose link to its master is up (a failover needs one)."""
    info = _cli(port, "info", "replication")
    return "role:master" in info or "master_link_status:up" in info


def _free_ports() -> list[int]:
    """NODES consecutive ports whose cluster bus ports (+10000) are free too.

    Random, so that two test runs on one machine do not meet on the same cluster; below the
    kernel's ephemeral range (32768 and up), where an outgoing connection may take a port
    between the check and the bind.
    """
    if FIRST_PORT is not None:
        first = int(FIRST_PORT)
        return list(range(first, first + NODES))
    for _ in range(50):
        first = random.randrange(20_000, 32_768 - 10_000 - NODES)
        ports = list(range(first, first + NODES))
        if not any(_port_open(p) or _port_open(p + 10_000) for p in ports):
            return ports
    raise ClusterUnavailable("found no free block of ports for a Redis Cluster")


def _wait(condition: object, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    """Start the cluster, wait until every slot is served, yield it, tear it down."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise ClusterUnavailable("redis-server and redis-cli are needed for a Redis Cluster")
    ports = _free_ports()
    with tempfile.TemporaryDirectory(prefix="jb-cluster-") as directory:
        cluster = LocalCluster(Path(directory), ports)
        try:
            for port in ports:
                cluster.start_node(port)
            _wait(lambda: all(_port_open(p) for p in ports), "the cluster's nodes to listen")
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            _wait(
                lambda: all("cluster_state:ok" in _cli(p, "cluster", "info") for p in ports),
                "cluster_state:ok on every node",
            )
            _wait(lambda: all(_synced(p) for p in ports), "every replica to sync")
            yield cluster
        finally:
            cluster.stop()
