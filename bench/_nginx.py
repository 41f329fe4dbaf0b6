"""Debian's nginx for proxy_bench.py: a fixed-answer backend and a reference reverse proxy.

Each instance runs in the foreground (`nginx -c FILE -g 'daemon off;'`) in a process group
of its own, with its pid file, logs and temp paths under the benchmark's temp folder, and
listens on 127.0.0.1 only. Stopping it signals that group and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("nginx-light", "wrk")

_COMMON = """\
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

_BACKEND = """\
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 '{answer}'; }}
    }}
"""

_UPSTREAM = """\
    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096{reuseport};
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{extra}        }}
    }}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def ensure_tools(allow_install: bool) -> str | None:
    """Install nginx and wrk with apt-get when missing (as root); else say what to run."""
    missing = [p for p, ok in zip(PACKAGES, (nginx_binary(), shutil.which("wrk")), strict=True)
               if not ok]
    if not missing:
        return None
    hint = f"apt-get install -y {' '.join(missing)}"
    if not allow_install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"missing {', '.join(missing)}: install with `sudo {hint}` (Debian/Ubuntu)"
    print(f"installing {', '.join(missing)} (apt-get) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`{hint}` failed: {done.stderr.strip()[-500:]}"
    return None


class Nginx:
    """One nginx master and its `workers` (1 unless said) in their own process group,
    on `cores` when given (sched_setaffinity before exec: the workers inherit it)."""

    def __init__(self, name: str, workdir: Path, body: str, port: int, workers: int = 1,
                 cores: list[int] | None = None) -> None:
        self.name = name
        self.port = port
        self.cores = cores
        self.dir = workdir / f"nginx-{name}"
        self.dir.mkdir(mode=0o755)
        # A root master runs its worker as `nobody`: it must reach its temp paths.
        os.chmod(workdir, 0o711)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(_COMMON.format(workers=workers, dir=self.dir, body=body))
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def backend(cls, workdir: Path, port: int, answer: str) -> Nginx:
        if "'" in answer or "\\" in answer:
            raise ValueError("the fixed answer must not contain quotes or backslashes")
        return cls("backend", workdir, _BACKEND.format(port=port, answer=answer), port)

    @classmethod
    def proxy(cls, workdir: Path, routes: dict[int, tuple[int, bool]], workers: int = 1,
              cores: list[int] | None = None) -> Nginx:
        """routes: listen port -> (upstream port, buffered); the first port is `.port`.
        With several workers each listens on its own socket (`reuseport`), as the
        supervisor's processes do, so the kernel spreads connections the same way."""
        servers = []
        reuseport = " reuseport" if workers > 1 else ""
        for i, (listen, (upstream, buffered)) in enumerate(routes.items()):
            extra = "" if buffered else "            proxy_buffering off;\n"
            servers.append(_UPSTREAM.format(name=f"up{i}", port=upstream, listen=listen,
                                            extra=extra, reuseport=reuseport))
        return cls(f"proxy-{workers}" if workers > 1 else "proxy", workdir, "".join(servers),
                   next(iter(routes)), workers, cores)

    def start(self, timeout: float = 10) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        check = subprocess.run([binary, "-t", "-c", str(self.conf)], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t ({self.name}) failed:\n{check.stderr}")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr.log").open("wb"),
            start_new_session=True, preexec_fn=self._pin,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx ({self.name}) exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.5
            ):
                return
            time.sleep(0.02)
        raise RuntimeError(f"nginx ({self.name}) did not listen on {self.port}")

    def _pin(self) -> None:  # in the child, before exec
        if self.cores:
            os.sched_setaffinity(0, self.cores)

    def pids(self) -> list[int]:
        """The master and its worker(s)."""
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def log_tail(self) -> str:
        parts = []
        for name in ("error.log", "stderr.log"):
            with contextlib.suppress(OSError):
                parts.append((self.dir / name).read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # nginx: fast shutdown
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]
