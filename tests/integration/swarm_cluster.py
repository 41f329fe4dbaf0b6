"""A real two-node Docker Swarm on one machine, for the Swarm runtime's tests.

Three network namespaces of the test's own: `<tag>-n1` and `<tag>-n2` are the nodes, each
with one `dockerd` (own data root, exec root, socket; no iptables, no bridge), and
`<tag>-br` holds the Linux bridge that joins them through a veth pair each, in a private
/24 that no route of the machine uses. Nothing is added to the machine's own network
namespace: the bridge sits in a namespace of its own, whose empty firewall forwards, so the
main daemon's `FORWARD DROP` policy never sees this traffic and no `DOCKER-USER` rule is
needed (the machine's namespace has no address in the /24 either: the tests cannot send
traffic there by mistake).

A dockerd started with `--bridge=none` deletes the `docker0` of its network namespace
(see own_dockerd.py): `NodeDaemon.start` refuses unless it is about to run inside one of
this cluster's node namespaces, which it checks by the namespace's inode and interfaces.

Node 1 is the manager (`swarm init`), node 2 joins as a worker and gets the node label
`ms-node=two`. The empty image is copied onto both nodes from the main daemon.

`cleanup` removes everything it made, whatever state a failed test left: the services,
the swarm (`leave --force`), each daemon by its PID and the containerd it started, what
they mounted under their folders, any process left in the node namespaces, the
namespaces (and with them the bridge and the veths), `/run/netns` when it made it, and
the folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tests.helpers import EMPTY_IMAGE
from tests.integration.own_dockerd import DaemonUnavailable, OwnDockerd

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class ClusterUnavailable(Exception):
    """This machine cannot build the cluster (the message says why)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ClusterUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _netns_inode(path: Path | str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that overlaps no address or route of the machine."""
    used = []
    for cmd in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"]):
        for line in subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "/" in word or word[0].isdigit():
                        used.append(ipaddress.ip_network(word, strict=False))
    for third in random.sample(range(1, 255), 254):
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise ClusterUnavailable("no free /24 in 10.213.0.0/16")


class NodeDaemon(OwnDockerd):
    """An OwnDockerd that runs inside a node's network namespace through `nsenter`."""

    def __init__(self, netns: Path) -> None:
        super().__init__(live_restore=False)
        self.netns = netns
        self.args = ["nsenter", f"--net={netns}", *self.args]

    @property
    def where(self) -> str:
        return f" in {self.netns}"

    def _refuse_the_machines_namespace(self) -> None:
        if (self.netns.parent != NETNS_DIR or not self.netns.name.startswith("msw")
                or _netns_inode(self.netns) == _netns_inode("/proc/self/ns/net")):
            raise RuntimeError(f"refusing to start dockerd --bridge=none outside a node "
                               f"namespace of a test cluster ({self.netns}): in the machine's "
                               "own namespace it would delete the main daemon's docker0")

    def node_id(self) -> str:
        return self.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()


class SwarmCluster:
    def __init__(self) -> None:
        self.tag = f"msw{uuid.uuid4().hex[:6]}"
        self.netns = {n: NETNS_DIR / f"{self.tag}-{n}" for n in ("br", "n1", "n2")}
        self.subnet = free_subnet()
        hosts = list(self.subnet.hosts())
        self.addr = {1: str(hosts[0]), 2: str(hosts[1])}
        self.nodes: dict[int, NodeDaemon] = {}
        self.node_ids: dict[int, str] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="msw-", dir="/tmp"))
        self._made: list[Path] = []  # namespaces this cluster added
        self._made_netns_dir = not NETNS_DIR.exists()  # `ip netns add` makes and mounts it

    @property
    def manager(self) -> NodeDaemon:
        return self.nodes[1]

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The docker CLI against the manager (node 1)."""
        return self.manager.docker(*args, timeout=timeout)

    # -- building -------------------------------------------------------------------

    def start(self) -> None:
        for tool in ("ip", "nsenter", "dockerd"):
            if shutil.which(tool) is None:
                raise ClusterUnavailable(f"no {tool} on PATH")
        if os.geteuid() != 0:
            raise ClusterUnavailable("network namespaces and a dockerd per node need root")
        self._network()
        for n in (1, 2):
            self.nodes[n] = NodeDaemon(self.netns[f"n{n}"])
            try:
                self.nodes[n].start()
            except DaemonUnavailable as exc:
                raise ClusterUnavailable(str(exc)) from exc
        self._check(self.manager.docker(
            "swarm", "init", "--advertise-addr", self.addr[1],
            "--listen-addr", f"{self.addr[1]}:2377", "--dispatcher-heartbeat", "1s"))
        token = self._check(self.manager.docker("swarm", "join-token", "-q", "worker"))
        self._check(self.nodes[2].docker(
            "swarm", "join", "--token", token.strip(), "--advertise-addr", self.addr[2],
            "--listen-addr", f"{self.addr[2]}:2377", f"{self.addr[1]}:2377"))
        self.node_ids = {n: d.node_id() for n, d in self.nodes.items()}
        self._check(self.docker("node", "update", "--label-add", "ms-node=two",
                                self.node_ids[2]))
        image = self.dir / "empty.tar"
        self._check(subprocess.run(["docker", "save", "-o", str(image), EMPTY_IMAGE],
                                   capture_output=True, text=True, timeout=120))
        for daemon in self.nodes.values():
            self._check(daemon.docker("load", "-i", str(image), timeout=120))

    def _network(self) -> None:
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        for path in self.netns.values():
            _ip("netns", "add", path.name)
            self._made.append(path)
        br = self.netns["br"].name
        _ip("-n", br, "link", "add", "br0", "type", "bridge")
        _ip("-n", br, "link", "set", "br0", "up")
        for n in (1, 2):
            node, veth = self.netns[f"n{n}"].name, f"{self.tag}v{n}"
            # Made in the bridge's namespace, its peer moved straight into the node's:
            # never an interface in the machine's own namespace.
            _ip("-n", br, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", node)
            _ip("-n", br, "link", "set", veth, "master", "br0", "up")
            _ip("-n", node, "addr", "add", f"{self.addr[n]}/{self.subnet.prefixlen}",
                "dev", "eth0")
            _ip("-n", node, "link", "set", "eth0", "up")
            _ip("-n", node, "link", "set", "lo", "up")

    @staticmethod
    def _check(done: subprocess.CompletedProcess[str]) -> str:
        if done.returncode != 0:
            raise ClusterUnavailable(f"`{' '.join(map(str, done.args))}` failed: "
                                     f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    # -- what the tests do --------------------------------------------------------

    def stop_node(self, n: int) -> None:
        """SIGTERM to that node's dockerd, by its PID: the node is lost to the swarm."""
        self.nodes[n].stop()

    def in_node(self, n: int, workers: int = 8) -> ThreadPoolExecutor:
        """Threads that live in node `n`'s network namespace (setns is per thread): what
        they connect to is that namespace's 127.0.0.1 and the private /24."""
        path = str(self.netns[f"n{n}"])
        return ThreadPoolExecutor(max_workers=workers, initializer=_enter_netns,
                                  initargs=(path,), thread_name_prefix=f"{self.tag}-n{n}")

    # -- cleaning up --------------------------------------------------------------

    def cleanup(self) -> None:
        try:
            self._leave()
            for daemon in self.nodes.values():
                with contextlib.suppress(Exception):
                    daemon.cleanup()  # its containers, the process by PID, mounts, folder
            self._kill_leftovers()
        finally:
            for path in reversed(self._made):
                subprocess.run(["ip", "netns", "del", path.name], capture_output=True)
            if self._made_netns_dir and NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir()):
                subprocess.run(["umount", str(NETNS_DIR)], capture_output=True)
                with contextlib.suppress(OSError):
                    NETNS_DIR.rmdir()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _leave(self) -> None:
        manager = self.nodes.get(1)
        if manager is not None and manager.running():
            with contextlib.suppress(Exception):
                ids = manager.docker("service", "ls", "-q").stdout.split()
                if ids:  # every service of this swarm is the test's: the swarm is
                    manager.docker("service", "rm", *ids)
        for daemon in self.nodes.values():
            with contextlib.suppress(Exception):
                if not daemon.running():
                    daemon.start()  # a node the test stopped: it still holds swarm state
                daemon.docker("swarm", "leave", "--force", timeout=30)

    def _kill_leftovers(self) -> None:
        """A process still in a node namespace (a containerd-shim whose daemon died) was
        started there by this cluster: SIGKILL it, by PID."""
        ours = {_netns_inode(p) for k, p in self.netns.items() if k != "br" and p.exists()}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if _netns_inode(proc / "ns" / "net") in ours:
                    os.kill(int(proc.name), signal.SIGKILL)


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


def run_in(pool: ThreadPoolExecutor, call: Callable[..., T], *args: object) -> T:
    return pool.submit(call, *args).result()
