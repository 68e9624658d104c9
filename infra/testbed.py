"""A local test bed of independent node engines: one network namespace and one dockerd per node, on one bridge.

    python -m infra.testbed up --nodes 2     # prints the nodes' engine URLs and addresses (JSON)
    python -m infra.testbed down             # removes everything it recorded, by its own recorded ids

Needs root. Everything created is recorded in STATE_DIR/testbed.json first and removed by those ids only:
namespaces, veths, the bridge, its iptables rule, dockerd processes, their data roots and cgroup parents, and the
test bed's CA (STATE_DIR/pki).

Engines listen on tcp://IP:2376 with mutual TLS only (`--tlsverify`: a client must present a certificate from the
test bed's CA; there is no plain 2375 listener), plus their unix socket /run/NAME.sock for root on this machine.
The control plane's client credentials are the set `testbed` (STATE_DIR/pki/clients/testbed/{ca,cert,key}.pem):
register nodes with `{"engine_url": node.engine_url, "tls": "testbed"}` and LITEFLEET_PKI_DIR=STATE_DIR/pki.
(Recipe and pitfalls: ../shared/ENVIRONMENT.md, "Several independent nodes on one machine".)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker

from control_plane.drivers.engine_client import engine_client
from control_plane.drivers.runtimes import runsc_runtime
from control_plane.pki import EngineTLS, client_cert, engine_cert, init_ca

CLIENT = "testbed"  # the client credential set every engine of a test bed accepts
ENGINE_PORT = 2376
METADATA_IP = "169.254.169.254"


@dataclass
class TestbedNode:
    __test__ = False  # not a pytest test class

    name: str  # also the netns name
    ip: str
    veth: str
    data_root: str
    pid: int | None = None
    pki_dir: str = ""  # the test bed's CA directory
    metadata_pid: int | None = None  # the fake metadata service on 169.254.169.254 in this node (`metadata_service`)

    @property
    def engine_url(self) -> str:
        return f"tcp://{self.ip}:{ENGINE_PORT}"

    @property
    def socket_url(self) -> str:
        """The engine's unix socket: root on this machine, no TLS (cleanup, debugging)."""
        return f"unix:///run/{self.name}.sock"

    @property
    def tls_name(self) -> str:
        """The client credential set to register this node with (`{"tls": node.tls_name}`)."""
        return CLIENT

    @property
    def tls(self) -> EngineTLS:
        """Client credentials for this engine (ca, cert, key paths)."""
        return EngineTLS.from_dir(Path(self.pki_dir) / "clients" / CLIENT)

    def client(self, timeout: float = 60.0) -> docker.DockerClient:
        """A docker SDK client for this engine over mutual TLS, as the control plane connects."""
        return engine_client(self.engine_url, tls=self.tls, timeout=timeout)


@dataclass
class Testbed:
    """Two test beds can live side by side given different prefixes and subnets (the demo's and the tests')."""

    __test__ = False  # not a pytest test class

    state_dir: Path
    prefix: str = "lf"
    subnet: str = "10.99.0"
    nodes: list[TestbedNode] = field(default_factory=list)
    bridge_created: bool = False

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "testbed.json"

    @property
    def pki_dir(self) -> Path:
        """The test bed's CA, engine certificates and the control plane's credential set (LITEFLEET_PKI_DIR)."""
        return self.state_dir / "pki"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "prefix": self.prefix,
            "subnet": self.subnet,
            "bridge_created": self.bridge_created,
            "nodes": [asdict(n) for n in self.nodes],
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, state_dir: Path, prefix: str = "lf", subnet: str = "10.99.0") -> Testbed:
        """The test bed recorded in `state_dir`, or a new one with this prefix and subnet."""
        bed = cls(state_dir, prefix, subnet)
        if bed.state_file.exists():
            state = json.loads(bed.state_file.read_text())
            bed.prefix, bed.subnet = state.get("prefix", prefix), state.get("subnet", subnet)
            bed.bridge_created = state["bridge_created"]
            bed.nodes = [TestbedNode(**node) for node in state["nodes"]]
        return bed

    def up(self, count: int) -> list[TestbedNode]:
        """Start `count` node engines (idempotent: nodes already up are kept)."""
        if not _exists("ip", "link", "show", self.bridge):
            self.bridge_created = True
            self.save()
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            _run("iptables", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")
        ca = init_ca(self.pki_dir, f"litefleet test bed {self.prefix} CA")  # an existing one is reused
        client_cert(ca, CLIENT)
        for index in range(len(self.nodes), count):
            letter = "abcdefghij"[index]
            node = TestbedNode(
                name=f"{self.prefix}-node-{letter}",
                ip=f"{self.subnet}.{11 + index}",
                veth=f"{self.prefix}v-{letter}",
                data_root=str(self.state_dir / f"node-{letter}"),
                pki_dir=str(self.pki_dir),
            )
            self.nodes.append(node)
            self.save()
            engine_cert(ca, node.name, [node.ip])
            self._start_node(node, index)
            self.save()
        for node in self.nodes:
            _wait_engine(node)
        return self.nodes

    def _start_node(self, node: TestbedNode, index: int) -> None:
        _run("ip", "netns", "add", node.name)
        _run("ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns", node.name)
        _run("ip", "link", "set", node.veth, "master", self.bridge, "up")
        _run("ip", "-n", node.name, "addr", "add", f"{node.ip}/24", "dev", "eth0")
        _run("ip", "-n", node.name, "link", "set", "eth0", "up")
        _run("ip", "-n", node.name, "link", "set", "lo", "up")
        _run("ip", "-n", node.name, "route", "add", "default", "via", self.gateway)
        root = Path(node.data_root)
        root.mkdir(parents=True, exist_ok=True)
        (root / "daemon.json").write_text(json.dumps(daemon_config()))
        server = EngineTLS.from_dir(self.pki_dir / "engines" / node.name)
        log = open(root / "dockerd.log", "ab")  # noqa: SIM115 (the daemon keeps it)
        process = subprocess.Popen(
            [
                "nsenter", f"--net=/run/netns/{node.name}", "dockerd",
                "--data-root", str(root / "data"),
                "--exec-root", f"/run/{node.name}",
                "--pidfile", f"/run/{node.name}.pid",
                "-H", f"unix:///run/{node.name}.sock",
                "-H", f"tcp://{node.ip}:{ENGINE_PORT}",
                "--tlsverify",
                "--tlscacert", str(server.ca),
                "--tlscert", str(server.cert),
                "--tlskey", str(server.key),
                "--bip", f"172.30.{11 + index}.1/24",
                "--default-address-pool", "base=172.31.0.0/16,size=24",
                "--cgroup-parent", f"/{node.name}",
                "--config-file", str(root / "daemon.json"),
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        node.pid = process.pid

    def metadata_service(self, node: TestbedNode, port: int = 80) -> str:
        """A stand-in for a cloud metadata service inside `node`'s namespace: METADATA_IP on the loopback there (so
        no packet for it can leave the machine, whether the isolation works or not) and an HTTP listener on it.
        Returns its URL. Safe to re-run: an existing one is kept."""
        url = f"http://{METADATA_IP}:{port}/"
        if node.metadata_pid is not None and _alive(node.metadata_pid):
            return url
        if METADATA_IP not in _output("ip", "-n", node.name, "-4", "addr", "show", "dev", "lo"):
            # on the namespace's loopback: this kernel has no `dummy` link type, and a local address is what
            # matters (its packets are delivered inside the node, never routed out)
            _run("ip", "-n", node.name, "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
        served = Path(node.data_root) / "metadata"
        (served / "latest").mkdir(parents=True, exist_ok=True)
        (served / "latest" / "meta-data").write_text("instance-id: i-testbed\n")
        process = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{node.name}", sys.executable, "-m", "http.server", str(port)]
            + ["--bind", METADATA_IP, "--directory", str(served)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        node.metadata_pid = process.pid
        self.save()
        check = f"import socket; socket.create_connection(({METADATA_IP!r}, {port}), timeout=1).close()"
        deadline = time.monotonic() + 15
        while not _exists("nsenter", f"--net=/run/netns/{node.name}", sys.executable, "-c", check):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the metadata stand-in in {node.name} did not answer in 15 s")
            time.sleep(0.2)
        return url

    def down(self) -> None:
        """Remove every recorded part. Safe to re-run: what is already gone is skipped."""
        for node in reversed(self.nodes):
            if node.metadata_pid is not None:
                _stop(node.metadata_pid, timeout=5)
            with contextlib.suppress(Exception):
                client = docker.DockerClient(base_url=node.socket_url, timeout=10)
                for container in client.containers.list(all=True):
                    container.remove(force=True, v=True)
            if node.pid is not None:
                _stop(node.pid)
            # the engine's exec root: its own network namespace stays bind-mounted there after it stopped
            _quiet("umount", f"/run/{node.name}/netns/default")
            shutil.rmtree(f"/run/{node.name}", ignore_errors=True)
            _quiet("ip", "netns", "delete", node.name)
            _quiet("ip", "link", "delete", node.veth)
            for controller in Path("/sys/fs/cgroup").glob(f"*/{node.name}"):
                for child in sorted(controller.rglob("*"), reverse=True):
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    controller.rmdir()
            _quiet("umount", "-R", node.data_root)
            shutil.rmtree(node.data_root, ignore_errors=True)
        if self.bridge_created:
            _quiet("iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")
            _quiet("ip", "link", "delete", self.bridge)
        shutil.rmtree(self.pki_dir, ignore_errors=True)
        self.nodes, self.bridge_created = [], False
        self.state_file.unlink(missing_ok=True)

    def kill_engine(self, node: TestbedNode) -> None:
        """SIGKILL a node's dockerd, its containerd and every container process under it: a node that dies."""
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)


def daemon_config() -> dict[str, object]:
    """The engines' daemon.json: gVisor's `runsc` registered as a runtime when it is installed (Debian's package;
    `infra/setup-host.sh` installs it). `--network=host` is needed on this kernel: see RUNSC_RUNTIME."""
    runsc = shutil.which("runsc")
    return {} if runsc is None else {"runtimes": {"runsc": runsc_runtime(runsc)}}


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def _quiet(*command: str) -> None:
    subprocess.run(command, capture_output=True, check=False)


def _output(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


def _exists(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def _wait_engine(node: TestbedNode, timeout: float = 60.0) -> None:
    """Until the engine answers over mutual TLS, as the control plane will reach it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with contextlib.closing(node.client(timeout=3)) as client:
                client.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"engine {node.engine_url} did not come up in {timeout:.0f}s") from None
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(pid: int, timeout: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _paths(node: TestbedNode) -> dict[str, str]:
    tls = node.tls
    return {"pki_dir": node.pki_dir, "tls_ca": str(tls.ca), "tls_cert": str(tls.cert), "tls_key": str(tls.key)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.testbed")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/litefleet-testbed"))
    parser.add_argument("--prefix", default="lf", help="names: <prefix>br0, <prefix>-node-a, <prefix>v-a")
    parser.add_argument("--subnet", default="10.99.0", help="the bridge's /24 (gateway .1, nodes .11, .12, ...)")
    args = parser.parse_args()
    bed = Testbed.load(args.state_dir, args.prefix, args.subnet)
    if args.command == "up":
        nodes = bed.up(args.nodes)
        described = [
            {"name": n.name, "engine_url": n.engine_url, "address": n.ip, "tls": n.tls_name, **_paths(n)} for n in nodes
        ]
        print(json.dumps(described))
    else:
        bed.down()
    sys.exit(0)


if __name__ == "__main__":
    main()
