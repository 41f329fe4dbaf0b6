"""The Swarm runtime on a real two-node Docker Swarm (swarm_cluster.py: two network
namespaces, one dockerd each, joined over a private bridge).

The supervisor runs as its own process inside node 1's network namespace and talks to
the manager's socket; the test's requests go to its 127.0.0.1 there (from threads that
entered that namespace), and it reaches node 2 over the private /24 only. The models are
stand-in servers on each node's own network (swarm-stack.yml): `pinned` may only run on
node 2, `roaming` anywhere.

Proved here, as a user and an operator see it (HTTP answers, /admin/models, /metrics,
and where Swarm says the tasks run): a model pinned to node 2 starts on its first request
and answers; a restarted supervisor adopts every running task without restarting one;
with node 2's dockerd stopped, Swarm marks the node down, the unpinned model's request is
held until Swarm's replacement runs on node 1 and then served there, and the pinned one
is refused at once with a clear 503 once Swarm can place it nowhere. check-config asks the
manager about the example stack (compose/swarm-stack.yml) and names a missing service.

The cluster is built once for the module; each test gets a fresh supervisor and starts
from both services at 0 replicas. The node-loss test stops node 2 for good: it runs last.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from tests.helpers import metric_value, poll
from tests.integration.supervisor_process import REPO, SupervisorProcess, http_get
from tests.integration.swarm_cluster import ClusterUnavailable, SwarmCluster, run_in

STACK = "mstest"
PORTS = {"pinned": 19301, "roaming": 19302, "crashy": 19303}
STACK_FILE = Path(__file__).with_name("swarm-stack.yml")


def unavailable(reason: str) -> None:
    helpers.unavailable("a two-node swarm from network namespaces", reason)


@contextlib.contextmanager
def built_cluster(*stacks: tuple[Path, str]) -> Iterator[SwarmCluster]:
    """A two-node cluster with `stacks` (file, namespace) deployed, removed afterwards; the
    test is skipped, with the reason printed, where no cluster can be built."""
    cluster = SwarmCluster()
    try:
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            unavailable(str(exc))
        for file, namespace in stacks:
            deploy(cluster, file, namespace)
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="module")
def cluster(docker_engine: None) -> Iterator[SwarmCluster]:
    example = REPO / "compose" / "swarm-stack.yml"
    with built_cluster((STACK_FILE, STACK), (example, "models")) as cluster:
        yield cluster


def deploy(cluster: SwarmCluster, file: Path, namespace: str) -> None:
    env = {**cluster.manager.env, "MS_REPO": str(REPO)}
    done = subprocess.run(["docker", "stack", "deploy", "--resolve-image", "never",
                           "--compose-file", str(file), namespace], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def node1(cluster: SwarmCluster) -> Iterator[ThreadPoolExecutor]:
    pool = cluster.in_node(1)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


class NodeSupervisor(SupervisorProcess):
    """`model-supervisor serve` inside node 1's network namespace (by `nsenter`)."""

    def __init__(self, workdir: Path, config: dict[str, Any], netns: Path,
                 pool: ThreadPoolExecutor) -> None:
        super().__init__(workdir, config)
        self.netns, self.pool = netns, pool

    def start(self, within: float = 30) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={self.netns}", sys.executable, "-m", "supervisor", "serve",
                 "--config", str(self.config_path)],
                cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        poll("the supervisor to answer /healthz", within, lambda: self._healthy())

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the supervisor exited:\n{self.log_tail()}")
        try:
            return run_in(self.pool, http_get, self.admin + "/healthz", 1)[0] == 200
        except OSError:
            return False


@pytest.fixture
def sup(cluster: SwarmCluster, node1: ThreadPoolExecutor, tmp_path: Path
        ) -> Iterator[NodeSupervisor]:
    scale_to_zero(cluster)
    config = {
        "runtime": "swarm",
        "swarm": {"host": cluster.manager.host, "stack": STACK, "poll_interval": "1s",
                  "unplaceable_timeout": "3s"},
        "models": {name: {"service": name, "upstream": f"http://127.0.0.1:{port}",
                          "startup_timeout": "60s", "idle_timeout": "10m",
                          "stop_timeout": "2s", "hold_timeout": "60s"}
                   for name, port in PORTS.items()},
    }
    process = NodeSupervisor(tmp_path, config, cluster.netns["n1"], node1)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"supervisor log (tail):\n{process.log_tail(30)}")


# -- what the test sees ------------------------------------------------------------


def _post(url: str, model: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    request = urllib.request.Request(url + "/v1/chat/completions", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=90) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def post(sup: NodeSupervisor, model: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A chat completion sent to the supervisor's 127.0.0.1 in node 1's namespace."""
    return run_in(sup.pool, _post, sup.url, model)


def states(sup: NodeSupervisor) -> dict[str, str]:
    status, body = run_in(sup.pool, http_get, sup.admin + "/admin/models")
    assert status == 200, body
    return {m["name"]: m["state"] for m in body["models"]}


def admin_post(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method="POST", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metrics(sup: NodeSupervisor) -> str:
    def get(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    return run_in(sup.pool, get, sup.url + "/metrics")


def tasks(cluster: SwarmCluster, model: str) -> list[tuple[str, str, str, str]]:
    """(task ID, node ID, desired state, state) of each task Swarm keeps for the model."""
    ids = cluster.docker("service", "ps", "-q", "--no-trunc", f"{STACK}_{model}").stdout.split()
    if not ids:
        return []
    fmt = "{{.ID}} {{.NodeID}} {{.DesiredState}} {{.Status.State}}"
    lines = cluster.docker("inspect", "--format", fmt, *ids).stdout.splitlines()
    # A task Swarm removed between the two calls has no line; one never placed, no node.
    fields = [line.split() for line in lines]
    return [(t, n, want, state) for t, n, want, state in (f for f in fields if len(f) == 4)]


def running_tasks(cluster: SwarmCluster, model: str) -> dict[str, str]:
    """Task ID -> node ID of the model's tasks that Swarm wants and reports running."""
    return {t: n for t, n, want, state in tasks(cluster, model) if want == state == "running"}


def replicas(cluster: SwarmCluster, model: str) -> int:
    fmt = "{{.Spec.Mode.Replicated.Replicas}}"
    return int(cluster.docker("service", "inspect", "--format", fmt,
                              f"{STACK}_{model}").stdout.strip())


def scale_to_zero(cluster: SwarmCluster) -> None:
    cluster.docker("service", "scale", "--detach",
                   *(f"{STACK}_{model}=0" for model in PORTS))
    gone = ("complete", "shutdown", "failed", "rejected", "orphaned", "remove")
    poll("both services without a task that runs or is about to", 30,
         lambda: all(state in gone for m in PORTS for *_, state in tasks(cluster, m)))


def start_on_node_2(cluster: SwarmCluster, sup: NodeSupervisor, model: str) -> None:
    """A first request starts `model`; node 1 is drained meanwhile, so that even a model
    Swarm may put anywhere lands on node 2."""
    cluster.docker("node", "update", "--availability", "drain", cluster.node_ids[1])
    try:
        status, body, headers = post(sup, model)
    finally:
        cluster.docker("node", "update", "--availability", "active", cluster.node_ids[1])
    assert status == 200, body
    assert headers.get("X-Supervisor-Cold-Start") == "true"
    assert list(running_tasks(cluster, model).values()) == [cluster.node_ids[2]]


# -- the scenarios -------------------------------------------------------------------


def test_a_model_pinned_to_node_2_starts_on_its_first_request_and_answers(
    cluster: SwarmCluster, sup: NodeSupervisor
) -> None:
    assert set(states(sup).values()) == {"stopped"}
    assert replicas(cluster, "pinned") == 0
    began = time.monotonic()
    status, body, headers = post(sup, "pinned")
    took = time.monotonic() - began
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "stand-in reply"
    assert headers.get("X-Supervisor-Cold-Start") == "true"
    assert list(running_tasks(cluster, "pinned").values()) == [cluster.node_ids[2]]
    assert "ready in" in sup.log_text() and f"on {cluster.addr[2]}" in sup.log_text()
    assert states(sup)["pinned"] == "ready"
    status, _, headers = post(sup, "pinned")
    assert status == 200 and headers.get("X-Supervisor-Cold-Start") != "true"
    exposition = metrics(sup)
    assert metric_value(exposition, "supervisor_model_cold_start_seconds_count",
                        model="pinned", profile="default", outcome="ok") == 1
    assert metric_value(exposition, "supervisor_model_state", model="pinned",
                        state="ready") == 1
    print(f"\npinned to node 2 ({cluster.addr[2]}): cold start answered in {took:.2f}s "
          f"through the supervisor on node 1")

    status, body = run_in(sup.pool, admin_post, sup.admin + "/admin/models/pinned/stop")
    assert status == 202, body
    poll("the stop", 30, lambda: states(sup)["pinned"] == "stopped")
    assert replicas(cluster, "pinned") == 0 and running_tasks(cluster, "pinned") == {}


def test_a_server_that_dies_while_loading_on_node_2_fails_with_its_log_and_is_scaled_down(
    cluster: SwarmCluster, sup: NodeSupervisor
) -> None:
    status, body, _ = post(sup, "crashy")
    assert status == 503, body
    assert body["error"]["code"] == "model_start_failed"
    message = body["error"]["message"]
    assert "stand-in failed to load weights (STANDIN_EXIT_CODE=3)" in message, message
    # Swarm would restart it for ever: the failed start scaled it back to 0.
    assert replicas(cluster, "crashy") == 0
    status, body, headers = post(sup, "crashy")  # within the 1 s backoff
    assert status == 503 and int(headers["Retry-After"]) >= 1, body


def test_a_restarted_supervisor_adopts_every_running_task(
    cluster: SwarmCluster, sup: NodeSupervisor
) -> None:
    start_on_node_2(cluster, sup, "pinned")
    start_on_node_2(cluster, sup, "roaming")
    before = {m: running_tasks(cluster, m) for m in ("pinned", "roaming")}
    sup.stop()  # it leaves what runs up
    mark = len(sup.log_text())
    sup.start()
    took = poll("both models adopted", 30, lambda: states(sup) == {
        "pinned": "ready", "roaming": "ready", "crashy": "stopped"})
    log = sup.log_text()[mark:]
    assert "adopting running profile=default service=pinned" in log
    assert "adopting running profile=default service=roaming" in log
    for model in before:
        status, body, headers = post(sup, model)
        assert status == 200, body
        assert headers.get("X-Supervisor-Cold-Start") != "true"
    assert {m: running_tasks(cluster, m) for m in before} == before, "a task was restarted"
    exposition = metrics(sup)
    for model in before:
        assert metric_value(exposition, "supervisor_model_state", model=model,
                            state="ready") == 1
    print(f"\nadopted both running tasks on node 2 within {took:.2f}s of the restart")


def test_node_2_lost_the_unpinned_model_is_served_from_node_1_the_pinned_one_refused(
    cluster: SwarmCluster, sup: NodeSupervisor
) -> None:
    start_on_node_2(cluster, sup, "pinned")
    start_on_node_2(cluster, sup, "roaming")
    began = time.monotonic()
    cluster.stop_node(2)

    def node_2() -> str:
        fmt = "{{.Status.State}}"
        return cluster.docker("node", "inspect", "--format", fmt,
                              cluster.node_ids[2]).stdout.strip()

    down = poll("Swarm to mark node 2 down", 60, lambda: node_2() == "down")
    noticed = poll("the supervisor to see both tasks gone", 30, lambda: states(sup) == {
        "pinned": "failed", "roaming": "failed", "crashy": "stopped"})

    status, body, headers = post(sup, "roaming")  # held until Swarm's replacement runs
    assert status == 200, body
    assert headers.get("X-Supervisor-Cold-Start") == "true"
    held = float(headers["X-Supervisor-Hold-Seconds"])
    assert held >= 1.0, "it should have waited for Swarm's replacement (restart delay 3 s)"
    assert list(running_tasks(cluster, "roaming").values()) == [cluster.node_ids[1]]
    assert f"on {cluster.addr[1]}" in sup.log_text()

    refused_at = time.monotonic()
    status, body, headers = post(sup, "pinned")
    refused = time.monotonic() - refused_at
    assert status == 503, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "model_start_failed"
    assert "no suitable node" in body["error"]["message"], body
    assert replicas(cluster, "pinned") == 0, "a failed start must not leave it wanted"
    assert states(sup)["pinned"] == "failed" and states(sup)["roaming"] == "ready"

    exposition = metrics(sup)
    for model in ("pinned", "roaming"):
        assert metric_value(exposition, "supervisor_model_transitions_total", model=model,
                            from_state="ready", to_state="failed") == 1
    assert metric_value(exposition, "supervisor_model_start_failures", model="pinned") == 1
    assert metric_value(exposition, "supervisor_model_cold_start_seconds_count",
                        model="pinned", profile="default", outcome="failed") == 1
    print(f"\nnode 2 stopped: marked down after {down:.2f}s, the supervisor saw both tasks "
          f"gone {noticed:.2f}s later; roaming held {held:.2f}s and served from node 1; "
          f"pinned refused with 503 in {refused:.2f}s ({time.monotonic() - began:.1f}s in all)")


def test_check_config_asks_the_manager_about_the_example_stack(
    cluster: SwarmCluster, tmp_path: Path
) -> None:
    env = {**os.environ, "SUPERVISOR_SWARM__HOST": cluster.manager.host}
    example = REPO / "compose" / "swarm-supervisor.yaml"
    done = subprocess.run([sys.executable, "-m", "supervisor", "check-config", str(example)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(example.read_text().replace("service: chat-small", "service: chat-big"))
    done = subprocess.run([sys.executable, "-m", "supervisor", "check-config", str(broken)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("models.chat-small.service: 'chat-big' is not a service of stack 'models' on the "
            "Swarm manager (it has: chat-small, step-audio-64k, voxcpm)"
            ) in done.stdout + done.stderr
