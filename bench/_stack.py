"""What proxy_bench.py runs: its own Compose project, two nginx instances (fixed-answer
backend, reference reverse proxy), the streaming backend and the supervisor, each a
process in its own process group, all on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _load import CpuWatch
from _nginx import Nginx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COMPOSE_FILE = HERE / "compose.yml"
IMAGE = "model-supervisor/empty:latest"

FAST_MODEL = "bench-fast"  # upstream: the nginx fixed-answer backend
STREAM_MODEL = "bench-stream"  # upstream: bench/_stream.py
SLOW_MODEL, SLOW_PORT = "bench-slow", 19302  # the stand-in, for cold starts
STANDIN_MODEL, STANDIN_PORT = "bench-standin", 19303  # the stand-in, warm, for load

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": FAST_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    },
    separators=(",", ":"),
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g} s")


def stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group this benchmark created for `proc` (pgid == pid)."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    host_port, _, path = url.split("://", 1)[1].partition("/")
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post(port: int, body: str, timeout: float = 60) -> tuple[int, float, dict[str, str]]:
    """POST one chat completion; return status, seconds to first byte (headers), headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        began = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        ttfb = time.perf_counter() - began
        resp.read()
        return resp.status, ttfb, dict(resp.getheaders())
    finally:
        conn.close()


class Stack:
    def __init__(self, workdir: Path, body: str) -> None:
        self.project = f"msbench-{os.urandom(4).hex()}"
        self.workdir = workdir
        self.body = body
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_port = free_port()
        self.log = workdir / "supervisor.log"
        self.backend = Nginx.backend(workdir, free_port(), ANSWER)
        self.stream_port = free_port()
        self.nginx_stream_port = free_port()
        self.proxy = Nginx.proxy(workdir, {
            free_port(): (self.backend.port, True),
            self.nginx_stream_port: (self.stream_port, False),  # proxy_buffering off
            (nginx_standin_port := free_port()): (STANDIN_PORT, True),
        })  # fmt: skip
        self.nginx_standin_port = nginx_standin_port
        self.stream: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- start / stop -------------------------------------------------------------------

    def start(self) -> None:
        if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
            raise RuntimeError(f"image {IMAGE} is missing: run scripts/setup.sh first")
        self.backend.start()
        with (self.workdir / "stream-backend.log").open("wb") as log:
            self.stream = subprocess.Popen(
                [sys.executable, str(HERE / "_stream.py"), "serve", str(self.stream_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_listening(self.stream_port, self.stream, "stream backend", 10)
        self.proxy.start()
        self.start_supervisor()
        # The first request to each warm model starts its container through the supervisor;
        # it then stays warm (idle_timeout 1 h) for the whole run.
        for model in (FAST_MODEL, STREAM_MODEL, STANDIN_MODEL):
            status, ttfb, _ = post(self.port, self.body.replace(FAST_MODEL, model))
            if status != 200:
                raise RuntimeError(f"warm-up request for {model} answered {status}")
            print(f"model {model} started via the supervisor in {ttfb:.2f} s", flush=True)

    def write_config(self) -> Path:
        def model(service: str, upstream: str, **extra: str) -> dict[str, str]:
            return {"service": service, "upstream": upstream, "idle_timeout": "1h",
                    "startup_timeout": "60s", **extra}

        config = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "compose": {"file": str(COMPOSE_FILE), "project": self.project},
            "models": {
                FAST_MODEL: model(FAST_MODEL, f"http://127.0.0.1:{self.backend.port}"),
                STREAM_MODEL: model(STREAM_MODEL, f"http://127.0.0.1:{self.stream_port}"),
                STANDIN_MODEL: model(STANDIN_MODEL, f"http://127.0.0.1:{STANDIN_PORT}"),
                SLOW_MODEL: model(SLOW_MODEL, f"http://127.0.0.1:{SLOW_PORT}",
                                  idle_timeout="1s", stop_timeout="1s"),
            },
            "log_level": "INFO",
        }
        path = self.workdir / "supervisor.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start_supervisor(self) -> None:
        config = self.write_config()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve", "--config", str(config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: pgid == pid
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if get(self.url + "/v1/models")[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"supervisor did not listen within 30 s:\n{self.log_tail()}")

    def teardown(self) -> None:
        stop_group(self.proc)
        with contextlib.suppress(Exception):
            self.compose("--profile", "*", "down", "-t", "1")
        self.proxy.stop()
        stop_group(self.stream)
        self.backend.stop()

    # ---- helpers ------------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 120) -> None:
        cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-2000:]}")

    def fixed_urls(self) -> dict[str, str]:
        return {"direct": f"http://127.0.0.1:{self.backend.port}",
                "nginx": f"http://127.0.0.1:{self.proxy.port}", "supervisor": self.url}

    def standin_urls(self) -> dict[str, str]:
        return {"direct": f"http://127.0.0.1:{STANDIN_PORT}",
                "nginx": f"http://127.0.0.1:{self.nginx_standin_port}", "supervisor": self.url}

    def stream_urls(self) -> dict[str, str]:
        return {"direct": f"http://127.0.0.1:{self.stream_port}",
                "nginx": f"http://127.0.0.1:{self.nginx_stream_port}", "supervisor": self.url}

    def cpu_groups(self, backend: str) -> dict[str, list[int]]:
        """PIDs per role; `backend` is "nginx-backend", "stream-backend" or "standin"."""
        assert self.proc is not None and self.stream is not None
        pids = {"nginx-backend": self.backend.pids, "stream-backend": lambda: [self.stream.pid],
                "standin": self.standin_pids}
        return {"supervisor": [self.proc.pid], "nginx-proxy": self.proxy.pids(),
                backend: pids[backend]()}

    def standin_pids(self) -> list[int]:
        done = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project,
                               "top", STANDIN_MODEL], capture_output=True, text=True)
        lines = done.stdout.splitlines()  # SERVICE # UID PID PPID ..., then one per process
        if not lines or "PID" not in lines[0].split():
            return []
        col = lines[0].split().index("PID")
        return [int(line.split()[col]) for line in lines[1:] if len(line.split()) > col]

    def cpu_watch(self, backend: str) -> CpuWatch:
        return CpuWatch(self.cpu_groups(backend))

    def describe(self) -> str:
        return (f"supervisor {self.url} (pid {self.proc and self.proc.pid}); nginx backend "
                f":{self.backend.port}; nginx proxy :{self.proxy.port} (streams "
                f":{self.nginx_stream_port}); stream backend :{self.stream_port}")

    def settings(self) -> dict[str, Any]:
        return {
            "backend": "Debian nginx, 1 worker, `return 200` with a fixed chat completion "
                       f"({len(ANSWER)} bytes)",
            "nginx_proxy": "Debian nginx, 1 worker, upstream keepalive 1024, "
                           "proxy_http_version 1.1, Connection \"\"; streams: proxy_buffering off",
            "stream_backend": "bench/_stream.py (asyncio raw sockets, uvloop when installed)",
            "supervisor": f"python -m supervisor serve, compose project {self.project}",
            "compose_file": str(COMPOSE_FILE.relative_to(REPO)),
        }

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def model_state(self, model: str) -> str:
        status, body = get(f"{self.url}/v1/models/{model}")
        if status != 200:
            raise RuntimeError(f"GET /v1/models/{model} answered {status}")
        return str(json.loads(body)["state"])

    def wait_state(self, model: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (now := self.model_state(model)) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"model {model} is {now!r}, not {state!r}, after {timeout}s")
            time.sleep(0.05)


class Baseline:
    """The supervisor as it was at git revision `rev`, beside today's in the same run: its
    files from `git archive` (the repository is not touched), one warm model on the same
    fixed-answer backend, a Compose project of its own. What a change costs is read off
    one run, not two runs on a machine whose speed drifts."""

    def __init__(self, stack: Stack, rev: str) -> None:
        self.stack = stack
        self.rev = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.dir = stack.workdir / f"baseline-{self.rev}"
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.project = f"{stack.project}-base"
        self.log = stack.workdir / "baseline.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir()
        archive = subprocess.run(["git", "archive", self.rev, "supervisor"], cwd=REPO,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(self.dir)], input=archive, check=True)
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            "compose": {"file": str(COMPOSE_FILE), "project": self.project},
            "models": {FAST_MODEL: {
                "service": FAST_MODEL, "upstream": f"http://127.0.0.1:{self.stack.backend.port}",
                "idle_timeout": "1h", "startup_timeout": "60s"}},
            "log_level": "INFO",
        }
        path = self.dir / "supervisor.yaml"
        path.write_text(json.dumps(config, indent=2))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve", "--config", str(path)],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(self.dir)}, start_new_session=True,
            )  # fmt: skip
        wait_listening(self.port, self.proc, f"baseline supervisor ({self.rev})", 30)
        status, ttfb, _ = post(self.port, self.stack.body)
        if status != 200:
            raise RuntimeError(f"the baseline's warm-up request answered {status}")
        print(f"baseline supervisor at {self.rev} started its model in {ttfb:.2f} s",
              flush=True)

    def stop(self) -> None:
        stop_group(self.proc)
        with contextlib.suppress(Exception):
            subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project,
                            "--profile", "*", "down", "-t", "1"], capture_output=True,
                           timeout=120)
