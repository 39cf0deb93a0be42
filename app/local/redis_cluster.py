"""A private Redis Cluster on 127.0.0.1: masters and replicas from the `redis-server` on PATH.

For the tests and benchmarks of the sharded stream (`DATASTORAGE_REDIS_CLUSTER=true`): each node
is started with `--cluster-enabled yes` in a folder of its own, and `redis-cli --cluster create`
joins them (the first `masters` nodes become masters with the default slot ranges, the rest their
replicas). A node can be killed, paused (SIGSTOP, so that its replication falls behind) and
started again on the same folder: it rejoins with the identity kept in its `nodes.conf`.
"""

import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import structlog

from app.local.embedded import ServerError, free_port

log = structlog.get_logger(__name__)


@dataclass
class ClusterNode:
    port: int
    bus_port: int
    data_dir: Path
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        """A plain client of this one node (CLUSTER commands, INFO, DEBUG)."""
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=5)


class LocalRedisCluster:
    def __init__(self, data_dir: Path, *, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000):
        self.data_dir = Path(data_dir).resolve()
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        # How long a master may be unreachable before its replica is promoted.
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """A seed node; redis-py's RedisCluster discovers the others from it."""
        return f"redis://{self.nodes[0].address}/0"

    def start(self, timeout: float = 30.0) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise ServerError("redis-server and redis-cli must be on PATH (Debian: `apt-get install redis-server`)")
        count = self.masters * (1 + self.replicas_per_master)
        taken: set[int] = set()
        for n in range(count):
            port, bus_port = _two_free_ports(taken)
            node = ClusterNode(port, bus_port, self.data_dir / f"node-{n}")
            self.nodes.append(node)
            self.start_node(node)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        self.wait_healthy(timeout)
        log.info("redis_cluster_started", url=self.url, masters=self.masters, nodes=len(self.nodes))

    def start_node(self, node: ClusterNode, timeout: float = 10.0) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(node.port),
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(node.bus_port),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                # A replica that fell behind still takes over: the tests measure what that loses.
                "--cluster-replica-validity-factor",
                "0",
                "--dir",
                str(node.data_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(node.data_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = node.client()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if node.process.poll() is not None:
                    raise ServerError(f"redis-server exited at start; see {node.data_dir / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(f"redis-server on {node.port} did not answer within {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL: whatever the node acknowledged and had not yet sent to its replica is gone."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=10)

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP: the node neither answers nor replicates until `resume`."""
        if node.process is not None:
            node.process.send_signal(signal.SIGSTOP)

    def resume(self, node: ClusterNode) -> None:
        if node.process is not None:
            node.process.send_signal(signal.SIGCONT)

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The node that serves `slot` now, in the view of a running master."""
        for node in self.nodes:
            if not node.running:
                continue
            client = node.client()
            try:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise ServerError(f"no running node knows who serves slot {slot}")

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        client = master.client()
        try:
            info = client.info("replication")
        finally:
            client.close()
        ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)}
        return [node for node in self.nodes if node.port in ports]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running node says `cluster_state:ok`, there are `masters` masters and every
        replica's link to its master is up."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._health_problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the Redis cluster is not healthy after {timeout} s: {problem}")
            time.sleep(0.1)

    def _health_problem(self) -> str | None:
        masters = 0
        for node in self.nodes:
            if not node.running:
                continue
            client = node.client()
            try:
                state = client.cluster("info")["cluster_state"]
                if state != "ok":
                    return f"{node.address} says cluster_state:{state}"
                replication = client.info("replication")
                if replication["role"] == "master":
                    masters += 1
                elif replication.get("master_link_status") != "up":
                    return f"replica {node.address} is not linked to its master yet"
            except redis.RedisError as error:
                return f"{node.address}: {error}"
            finally:
                client.close()
        return None if masters == self.masters else f"{masters} masters, expected {self.masters}"

    def stop(self) -> None:
        for node in self.nodes:
            self.resume(node)  # a paused process does not act on SIGTERM
            process, node.process = node.process, None
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("redis_cluster_stopped")


def _two_free_ports(taken: set[int]) -> tuple[int, int]:
    ports: list[int] = []
    while len(ports) < 2:
        port = free_port()
        if port not in taken:
            taken.add(port)
            ports.append(port)
    return ports[0], ports[1]
