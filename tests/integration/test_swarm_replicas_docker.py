"""A model scaled as one Swarm service (`replicas: {min: 0, max: 2}`) on the real two-node
Swarm of swarm_cluster.py: each replica is a slot of the service, and Swarm places its
task (`max_replicas_per_node: 1` in swarm-stack.yml puts the two on both nodes).

Proved, as an operator sees it (HTTP answers, where Swarm says the tasks run, what each
stand-in counted): load sent from node 1's side scales the service 0 -> 2, the two tasks
run on the two nodes and both serve a real share, every request answers 200; a restarted
supervisor adopts both running tasks without restarting one; once the load is gone the
service goes back to 0 (replicas.min).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from tests.helpers import PATIENCE
from tests.integration.supervisor_process import http_get
from tests.integration.swarm_cluster import SwarmCluster, run_in
from tests.integration.test_swarm_docker import (
    STACK,
    STACK_FILE,
    NodeSupervisor,
    _post,
    built_cluster,
    poll,
    replicas,
    running_tasks,
    states,
)

PORT = 19304
IDLE = 4.0
CLIENTS, AFTER = 12, 20  # clients; requests each once both replicas are ready


@pytest.fixture(scope="module")
def cluster(docker_engine: None) -> Iterator[SwarmCluster]:
    with built_cluster((STACK_FILE, STACK)) as cluster:
        yield cluster


@pytest.fixture
def node1(cluster: SwarmCluster) -> Iterator[ThreadPoolExecutor]:
    pool = cluster.in_node(1, workers=CLIENTS + 4)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def sup(cluster: SwarmCluster, node1: ThreadPoolExecutor, tmp_path: Path
        ) -> Iterator[NodeSupervisor]:
    config = {
        "runtime": "swarm",
        "swarm": {"host": cluster.manager.host, "stack": STACK, "poll_interval": "1s"},
        "models": {"scaled": {
            "service": "scaled", "upstream": f"http://127.0.0.1:{PORT}",
            "replicas": {"min": 0, "max": 2}, "target_concurrency": 2,
            "startup_timeout": "60s", "idle_timeout": f"{IDLE:g}s", "stop_timeout": "2s",
            "hold_timeout": "60s"}},
    }
    process = NodeSupervisor(tmp_path, config, cluster.netns["n1"], node1)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"supervisor log (tail):\n{process.log_tail(40)}")


def served(sup: NodeSupervisor, addr: str) -> int:
    """Completions the stand-in on that node answered (its own count)."""
    status, body = run_in(sup.pool, http_get, f"http://{addr}:{PORT}/standin/stats", 5)
    assert status == 200, body
    return int(body["requests"].get("POST /v1/chat/completions", 0))


def replica_states(sup: NodeSupervisor) -> list[tuple[str, str]]:
    status, body = run_in(sup.pool, http_get, sup.admin + "/admin/models/scaled")
    assert status == 200, body
    return [(r["name"], r["state"]) for r in body["replicas"]]


def test_load_scales_one_service_to_both_nodes_a_restart_adopts_both_and_idle_scales_to_0(
    cluster: SwarmCluster, sup: NodeSupervisor
) -> None:
    assert states(sup) == {"scaled": "stopped"} and replicas(cluster, "scaled") == 0

    both_ready = threading.Event()

    def client() -> list[int]:
        # Until both replicas are ready (however long Swarm takes here), then AFTER more.
        codes = []
        while not both_ready.is_set():
            codes.append(_post(sup.url, "scaled")[0])
        codes += [_post(sup.url, "scaled")[0] for _ in range(AFTER)]
        return codes

    began = time.monotonic()
    clients = [sup.pool.submit(client) for _ in range(CLIENTS)]
    try:
        poll("both replicas ready under the load", PATIENCE,
             lambda: replica_states(sup) == [("scaled#1", "ready"), ("scaled#2", "ready")])
        at_ready = {n: served(sup, cluster.addr[n]) for n in (1, 2)}
    finally:
        both_ready.set()
    done, _ = wait(clients)
    statuses = [code for future in done for code in future.result()]
    took = time.monotonic() - began

    on = running_tasks(cluster, "scaled")
    assert replicas(cluster, "scaled") == 2
    assert sorted(on.values()) == sorted(cluster.node_ids[n] for n in (1, 2)), on
    split = {n: served(sup, cluster.addr[n]) for n in (1, 2)}
    shared = {n: split[n] - at_ready[n] for n in (1, 2)}  # with both ready
    total = len(statuses)
    print(f"\n{total} requests from {CLIENTS} clients on node 1's side in {took:.1f}s; "
          "once both were ready: " + ", ".join(
              f"node {n} {c} ({100 * c / sum(shared.values()):.0f} %)"
              for n, c in shared.items()))
    assert statuses == [200] * total
    assert sum(split.values()) == total
    assert min(shared.values()) >= 0.15 * sum(shared.values()), shared
    assert replica_states(sup) == [("scaled#1", "ready"), ("scaled#2", "ready")]

    sup.stop()  # it leaves what runs up
    mark = len(sup.log_text())
    restarted = time.monotonic()
    sup.start()
    adopted = poll("both replicas adopted", PATIENCE, lambda: replica_states(sup) == [
        ("scaled#1", "ready"), ("scaled#2", "ready")])
    log = sup.log_text()[mark:]
    assert "adopting running profile=default service=scaled#1" in log
    assert "adopting running profile=default service=scaled#2" in log
    assert running_tasks(cluster, "scaled") == on, "a task was restarted"
    status, body, headers = run_in(sup.pool, _post, sup.url, "scaled")
    assert status == 200 and headers.get("X-Supervisor-Cold-Start") != "true", body

    poll("the service back to 0 replicas (replicas.min)", 3 * IDLE + 30,
         lambda: states(sup) == {"scaled": "stopped"} and replicas(cluster, "scaled") == 0
         and not running_tasks(cluster, "scaled"))
    assert "Swarm kept slot" not in sup.log_text()  # it removed the slot asked for
    print(f"adopted both tasks {adopted:.2f}s after the restart; back to 0 replicas "
          f"{time.monotonic() - restarted:.1f}s after it (idle_timeout {IDLE:g}s, twice)")


