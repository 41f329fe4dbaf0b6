"""A Docker daemon of the test's own: its own data root, exec root, pid file and socket
under a temp folder, no iptables, no bridge (containers use the host network). It can be
stopped and started again by its PID without touching the machine's daemon. The empty image
the stand-ins run from is copied in from the main daemon (`docker save | docker load`).

It must run in a network namespace of its own (`unshare --net`): a dockerd started with
`--bridge=none` deletes the `docker0` interface of its network namespace (Moby's
removeDefaultBridgeInterface), which in the machine's namespace is the main daemon's
bridge; with a bridge, it would share docker0 with the main daemon. `start` refuses to run
where any interface but `lo` exists.

Cleaning up removes every container on it (all of them are the test's), stops it, stops
the containerd it started if that outlived it, unmounts what it mounted under the temp
folder, and removes the folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import EMPTY_IMAGE


class DaemonUnavailable(Exception):
    """This machine cannot run a second dockerd (the message says why)."""


class OwnDockerd:
    def __init__(self, *, live_restore: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="msd-", dir="/tmp"))  # short: socket paths
        self.sock = self.dir / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.log = self.dir / "dockerd.log"
        (self.dir / "daemon.json").write_text("{}")  # not the machine's /etc/docker/daemon.json
        self.args = [
            "dockerd", "--config-file", str(self.dir / "daemon.json"),
            "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
            "--pidfile", str(self.dir / "docker.pid"), "-H", self.host,
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            *(["--live-restore"] if live_restore else []),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def answers(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}",
                               timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def start(self, within: float = 60) -> None:
        if shutil.which("dockerd") is None:
            raise DaemonUnavailable("no dockerd binary on PATH")
        if os.geteuid() != 0:
            raise DaemonUnavailable("a second dockerd needs root")
        self._refuse_the_machines_namespace()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + within
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
                self._stop_process()
                raise DaemonUnavailable(f"dockerd did not come up{self.where}:\n{tail}")
            time.sleep(0.1)

    where = ""  # where it runs, for the error that says it did not come up

    def _refuse_the_machines_namespace(self) -> None:
        interfaces = {name for _, name in socket.if_nameindex()}
        if interfaces - {"lo"}:
            raise RuntimeError(
                "refusing to start a second dockerd beside network interfaces "
                f"({', '.join(sorted(interfaces))}): in the machine's network namespace it "
                "would delete the main daemon's docker0; run it under `unshare --net`")

    def load_empty_image(self) -> None:
        save = subprocess.Popen(["docker", "save", EMPTY_IMAGE], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "load"], env=self.env, stdin=save.stdout,
                              capture_output=True, text=True, timeout=120)
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(timeout=60) != 0 or load.returncode != 0:
            raise DaemonUnavailable(f"cannot copy {EMPTY_IMAGE} in: {load.stderr.strip()}")

    def stop(self) -> None:
        """SIGTERM by PID and wait for the exit: the daemon is away, as when it crashes or
        its package is upgraded."""
        self._stop_process()
        assert not self.answers()

    def _stop_process(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        try:
            if not self.running():
                with contextlib.suppress(DaemonUnavailable):
                    self.start()  # its containers may still run (live restore): remove them
            if self.running():
                ids = self.docker("ps", "-aq").stdout.split()
                if ids:
                    self.docker("rm", "--force", "--volumes", *ids)
            self._stop_process()
            self._stop_leftover_containerd()
        finally:
            self._unmount()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_leftover_containerd(self) -> None:
        """The containerd this dockerd started, should it outlive it (found by the pid file
        under this daemon's own exec root)."""
        pidfile = self.dir / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(self.dir).encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)

    def _unmount(self) -> None:
        """What the daemon left mounted under its folder (data root, netns, overlays),
        deepest first."""
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point == str(self.dir) or point.startswith(f"{self.dir}/"):
                mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", point], capture_output=True)
