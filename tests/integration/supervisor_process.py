"""`python -m supervisor serve` as a separate process, the way an operator runs it (uvloop,
signal handlers, the open-files limit raised at start), in a process group of its own: it
is stopped by that group and nothing else."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET with the standard library (a blocking call: for set-up and polls between steps)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class SupervisorProcess:
    def __init__(self, workdir: Path, config: dict[str, Any], *, nofile: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.config_path = workdir / "supervisor.yaml"
        self.log_path = workdir / "supervisor.log"
        config = {"listen": f"127.0.0.1:{self.port}",
                  "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
                  "log_level": "INFO", **config}
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.nofile = nofile
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def _limits(self) -> None:  # in the child, before exec: what LimitNOFILE= would give
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self, within: float = 30) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve", "--config", str(self.config_path)],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self._limits)
        deadline = time.monotonic() + within
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the supervisor exited ({self.proc.returncode}):\n"
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(self.admin + "/healthz", 1)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the supervisor did not answer within {within}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the process group this test made (pgid == pid), SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")
