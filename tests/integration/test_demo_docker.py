"""`bash scripts/demo.sh --standin` as a user runs it: once the supervisor answers, the
demo says where the proxy, the admin API and its status page are, whether a token is
needed, after how long idle a model stops, and how to stop; Ctrl-C (SIGINT to its process
group, as a terminal sends it) stops the supervisor and then removes every container of
the demo's Compose project. On ports and a project of its own, beside any other demo."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor_process import free_port

REPO = Path(__file__).resolve().parents[2]
BANNER_END = "Stop: Ctrl-C"  # the banner's last item
READY_WITHIN = 60.0  # setup.sh on a prepared machine, check-config, the server's start
STOP_WITHIN = 40.0  # the supervisor's shutdown, then `docker compose down`


class Demo:
    """The demo script in a process group of its own, its output read line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            ["bash", "scripts/demo.sh", "--standin"], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def read_until(self, marker: str, within: float) -> str:
        """The output up to the line holding `marker`; fails (with the output) at the deadline."""
        deadline = time.monotonic() + within
        while not any(marker in line for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {marker!r} within {within}s; output:\n{self.output}")
            if line is None:
                pytest.fail(f"the demo exited ({self.proc.wait()}) before {marker!r}; "
                            f"output:\n{self.output}")
            self.lines.append(line)
        return self.output

    def read_to_end(self) -> str:
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return self.output

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def containers(project: str) -> list[str]:
    done = subprocess.run(
        ["docker", "ps", "--all", "--format", "{{.Names}}",
         "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.split()


@pytest.fixture
def demo_env(docker_engine: None) -> Iterator[tuple[dict[str, str], str]]:
    project = f"mstest-demo-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    env.update(DEMO_PORT=str(free_port()), DEMO_ADMIN_PORT=str(free_port()),
               DEMO_STANDIN_PORT=str(free_port()), DEMO_PROJECT=project)
    yield env, project
    for name in containers(project):  # only when the test failed half-way
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def chat(url: str) -> int:
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": "Hi!"}]}
    request = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def test_the_demo_says_where_everything_is_and_ctrl_c_leaves_nothing(demo_env) -> None:
    env, project = demo_env
    proxy = f"http://127.0.0.1:{env['DEMO_PORT']}"
    admin = f"http://127.0.0.1:{env['DEMO_ADMIN_PORT']}"
    demo = Demo(env)
    try:
        banner = demo.read_until(BANNER_END, READY_WITHIN)
        banner = banner[banner.index("Ready."):]
        assert f"Proxy (OpenAI API)  {proxy}/v1" in banner
        assert f"Admin API           {admin}/admin/models" in banner
        assert f"Status page         {admin}/" in banner
        assert "Admin token         none needed" in banner
        assert "Idle stop" in banner and "demo-chat: 2 min" in banner
        assert "Stop: Ctrl-C" in banner
        # What it says is so: the proxy answers there, the page is there without a token.
        assert chat(proxy) == 200  # the stand-in starts (3 s): a container to remove later
        with urllib.request.urlopen(admin + "/", timeout=10) as page:
            assert b'id="first-state">{' in page.read()
        assert containers(project)

        demo.interrupt()
        assert demo.proc.wait(timeout=STOP_WITHIN) == 0
        output = demo.read_to_end()
        assert output.index("shutting down") < output.index("removing the demo's containers")
        assert containers(project) == []
    finally:
        if demo.proc.poll() is None:
            demo.kill()
