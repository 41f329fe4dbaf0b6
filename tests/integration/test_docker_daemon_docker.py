"""Docker itself failing: the Docker daemon stops (by its PID; the test's own daemon, not
the machine's) while one model runs and another is stopped, then starts again. The
supervisor is not restarted: `/readyz` says 503 while the daemon is away and 200 once it is
back; the model that runs keeps being served (the daemon runs with --live-restore, so its
containers outlive it); a request that needs a start gets 503 `runtime_unavailable`; once
the daemon is back the supervisor re-syncs, starts the stopped model on demand and still
serves the one that ran, which was not restarted.

Without --live-restore the daemon takes its containers down with it: the second scenario
proves what the supervisor does then (no hang, a clear 503, and a fresh start once the
daemon is back).

The scenarios run in a network namespace of their own (`unshare --net`, loopback only):
the test's daemon, its host-network containers, the supervisor and the client, all on that
namespace's 127.0.0.1. A second dockerd in the machine's namespace would delete the main
daemon's docker0 (see own_dockerd.py). pytest collects one test here, which runs this same
file again inside the namespace, where the scenarios are the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.helpers import ComposeProject, poll

from .conftest import COMPOSE_FILE, chat
from .own_dockerd import DaemonUnavailable, OwnDockerd
from .supervisor_process import SupervisorProcess, http_get

IN_OWN_NETNS = os.environ.get("MS_TEST_OWN_NETNS") == "1"
RUNS, STOPPED = "chat-fast", "chat-slow"  # A runs when the daemon goes; B is stopped
UPSTREAMS = {RUNS: "http://127.0.0.1:19101", STOPPED: "http://127.0.0.1:19102"}


@dataclass
class DaemonCompose(ComposeProject):
    """A Compose project on the test's own daemon."""

    docker_host: str = ""

    def run(self, *args: str) -> str:
        cmd = ["docker", "compose", "-f", str(self.file), "-p", self.name, *args]
        env = {**os.environ, "DOCKER_HOST": self.docker_host}
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120,
                              env=env).stdout

    def starts(self, service: str) -> int:
        return self.log_lines(service, "standin: starting")


@dataclass
class Stack:
    daemon: OwnDockerd
    compose: DaemonCompose
    sup: SupervisorProcess


def unavailable(reason: str) -> None:
    helpers.unavailable("a second Docker daemon", reason)


@pytest.fixture
def stack(request: pytest.FixtureRequest, docker_engine: None, tmp_path: Path
          ) -> Iterator[Stack]:
    daemon = OwnDockerd(live_restore=request.param)  # parametrized indirectly by each test
    sup: SupervisorProcess | None = None
    try:
        try:
            daemon.start()
            daemon.load_empty_image()
        except DaemonUnavailable as exc:
            unavailable(str(exc))
        compose = DaemonCompose(COMPOSE_FILE, docker_host=daemon.host)
        config = {
            "compose": {"file": str(COMPOSE_FILE), "project": compose.name},
            "models": {name: {"service": name, "upstream": url, "startup_timeout": "60s",
                              "idle_timeout": "10m", "stop_timeout": "1s"}
                       for name, url in UPSTREAMS.items()},
        }
        sup = SupervisorProcess(tmp_path, config, env={"DOCKER_HOST": daemon.host})
        sup.start()
        yield Stack(daemon, compose, sup)
    finally:
        if sup is not None:
            sup.stop()
            print(f"supervisor log (tail):\n{sup.log_tail(25)}")
        daemon.cleanup()


def post(sup: SupervisorProcess, model: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        sup.url + "/v1/chat/completions", method="POST", data=json.dumps(chat(model)).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def ready(sup: SupervisorProcess) -> int:
    return http_get(sup.admin + "/readyz")[0]


def states(sup: SupervisorProcess) -> dict[str, str]:
    status, body = http_get(sup.admin + "/admin/models")
    assert status == 200, body
    return {m["name"]: m["state"] for m in body["models"]}


def log_has(sup: SupervisorProcess, text: str, after: int = 0) -> bool:
    return text in sup.log_text()[after:]


if not IN_OWN_NETNS:
    def test_docker_daemon_failing_scenarios_in_a_network_namespace_of_their_own(
        docker_engine: None
    ) -> None:
        for tool in ("unshare", "ip", "dockerd"):
            if shutil.which(tool) is None:
                unavailable(f"no {tool} on PATH")
        probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            unavailable(f"cannot make a network namespace: {probe.stderr.strip()}")
        basetemp = tempfile.mkdtemp(prefix="ms-netns-pytest-")
        cmd = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
               f"--basetemp={basetemp}", __file__]
        proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2],
                                env={**os.environ, "MS_TEST_OWN_NETNS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # pytest tears its fixtures down on SIGINT
            try:
                out, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
        finally:
            shutil.rmtree(basetemp, ignore_errors=True)
        print(out)
        assert proc.returncode == 0, "the scenarios failed inside their network namespace"
        if "skipped" in out and "passed" not in out:
            pytest.skip("skipped inside the namespace (see its output)")


if IN_OWN_NETNS:
    @pytest.mark.parametrize("stack", [True], indirect=True, ids=["live-restore"])
    def test_daemon_away_running_model_served_start_refused_then_resynced_without_restart(
        stack: Stack
    ) -> None:
        sup, daemon, compose = stack.sup, stack.daemon, stack.compose
        pid = sup.pid
        assert post(sup, RUNS)[0] == 200
        assert states(sup) == {RUNS: "ready", STOPPED: "stopped"}
        assert ready(sup) == 200

        mark = len(sup.log_text())
        daemon.stop()
        went = poll("/readyz to say 503", 10, lambda: ready(sup) == 503)
        status, body = http_get(sup.admin + "/readyz")
        assert status == 503 and "Docker is not reachable" in body["error"]["message"], body
        noticed = poll("the watcher to see the daemon gone", 10,
                       lambda: log_has(sup, "the runtime is unreachable", mark))
        served = [post(sup, RUNS)[0] for _ in range(20)]  # its container outlives the daemon
        assert served == [200] * 20
        status, body, headers = post(sup, STOPPED)
        assert status == 503, body
        assert body["error"]["code"] == "runtime_unavailable"
        assert "runtime is unreachable" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        assert states(sup) == {RUNS: "ready", STOPPED: "stopped"}

        mark = len(sup.log_text())
        daemon.start()
        back = poll("/readyz to say 200 again", 30, lambda: ready(sup) == 200)
        resynced = poll("the re-sync", 30, lambda: log_has(sup, "re-syncing", mark))
        status, body, headers = post(sup, STOPPED)
        assert status == 200, body
        assert headers.get("X-Supervisor-Cold-Start") == "true"
        assert post(sup, RUNS)[0] == 200
        assert states(sup) == {RUNS: "ready", STOPPED: "ready"}
        assert compose.starts(RUNS) == 1, "the model that ran was restarted"
        assert compose.starts(STOPPED) == 1
        assert sup.alive() and sup.pid == pid
        assert sup.log_text().count("supervising 2 models") == 1
        print(f"\nlive restore: /readyz 503 {went:.2f}s after the daemon stopped, the watcher "
              f"noticed within {noticed:.2f}s of that; daemon back: /readyz 200 after "
              f"{back:.2f}s, re-synced {resynced:.2f}s after the daemon was up")


    @pytest.mark.parametrize("stack", [False], indirect=True, ids=["no-live-restore"])
    def test_daemon_away_without_live_restore_takes_the_model_down_clear_503_then_fresh_start(
        stack: Stack
    ) -> None:
        sup, daemon, compose = stack.sup, stack.daemon, stack.compose
        pid = sup.pid
        assert post(sup, RUNS)[0] == 200
        mark = len(sup.log_text())
        daemon.stop()  # it stops its containers as it goes
        poll("/readyz to say 503", 10, lambda: ready(sup) == 503)
        poll("the watcher to see the daemon gone", 10,
             lambda: log_has(sup, "the runtime is unreachable", mark))
        began = time.monotonic()
        status, body, headers = post(sup, RUNS)
        took = time.monotonic() - began
        print(f"\nno live restore: the model that ran, daemon away: {status} {body} "
              f"in {took:.2f}s; states {states(sup)}")
        assert status == 503, body
        assert body["error"]["code"] == "runtime_unavailable", body
        status, body, _ = post(sup, STOPPED)
        assert status == 503 and body["error"]["code"] == "runtime_unavailable", body

        mark = len(sup.log_text())
        daemon.start()
        poll("/readyz to say 200 again", 30, lambda: ready(sup) == 200)
        poll("the re-sync", 30, lambda: log_has(sup, "re-syncing", mark))
        for model in (RUNS, STOPPED):
            status, body, headers = post(sup, model)
            assert status == 200, (model, body)
            assert headers.get("X-Supervisor-Cold-Start") == "true"
        assert compose.starts(RUNS) == 2 and compose.starts(STOPPED) == 1
        assert sup.alive() and sup.pid == pid
