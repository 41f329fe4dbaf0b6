"""Task and endpoint selection of the Swarm runtime, on dicts shaped like the Docker API's
answers (`GET /tasks`, `/nodes`, `/services/{id}`) as Engine 20.10 gives them: no Swarm."""

from __future__ import annotations

from typing import Any

from supervisor.runtime import swarm_tasks as st
from supervisor.runtime.base import ServiceState, slot_name, split_slot


def node(node_id: str, state: str = "ready", addr: str = "10.0.0.1",
         manager: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"ID": node_id, "Status": {"State": state, "Addr": addr}}
    if manager is not None:
        found["ManagerStatus"] = {"Addr": manager, "Leader": True}
    return found


def task(task_id: str, state: str, node_id: str | None = "n1", *, desired: str = "running",
         service: str = "svc1", slot: int = 1, err: str | None = None, code: int = 0,
         at: str = "2026-01-01T00:00:00.000000001Z") -> dict[str, Any]:
    status: dict[str, Any] = {"State": state, "Timestamp": at, "Message": state,
                              "ContainerStatus": {"ExitCode": code}}
    if err is not None:
        status["Err"] = err
    found = {"ID": task_id, "ServiceID": service, "Slot": slot, "DesiredState": desired,
             "Status": status}
    if node_id is not None:
        found["NodeID"] = node_id
    return found


NODES = [node("n1", addr="10.0.0.1"), node("n2", addr="10.0.0.2"),
         node("n3", state="down", addr="10.0.0.3")]
READY = st.node_addresses(NODES)


def test_only_ready_nodes_have_an_address_and_a_manager_on_0000_uses_its_advertised_one() -> None:
    assert READY == {"n1": "10.0.0.1", "n2": "10.0.0.2"}
    assert st.node_addresses([node("m", addr="0.0.0.0", manager="10.9.0.7:2377")]) == {
        "m": "10.9.0.7"}
    assert st.node_addresses([node("m", addr="0.0.0.0", manager="[fd00::7]:2377")]) == {
        "m": "fd00::7"}


def test_a_task_serves_when_wanted_running_and_on_a_ready_node() -> None:
    tasks = [
        task("a", "running", "n2", slot=2),
        task("b", "running", "n1", slot=1),
        task("c", "running", "n3"),  # its node is down: Swarm still says running
        task("d", "running", "n1", desired="shutdown"),  # being stopped
        task("e", "starting", "n1"),
    ]
    assert [t["ID"] for t in st.running(tasks, READY)] == ["b", "a"]
    assert st.endpoints(tasks, READY) == ["10.0.0.1", "10.0.0.2"]


def test_a_lost_node_leaves_an_unpinned_service_with_its_replacement_on_the_way() -> None:
    tasks = [task("old", "running", "n3", desired="shutdown"),
             task("new", "assigned", "n1", desired="ready")]  # waits out the restart delay
    assert st.endpoints(tasks, READY) == []
    assert [t["ID"] for t in st.coming(tasks)] == ["new"]
    assert st.unplaceable(tasks) is None


def test_a_service_pinned_to_a_lost_node_is_unplaceable_with_the_schedulers_reason() -> None:
    why = "no suitable node (scheduling constraints not satisfied on 2 nodes)"
    tasks = [task("old", "running", "n3", desired="shutdown"),
             task("new", "pending", None, err=why)]
    assert st.unplaceable(tasks) == why
    assert st.endpoints(tasks, READY) == []


def test_status_running_exited_with_the_newest_failures_code_or_absent() -> None:
    assert st.status_of([task("a", "running", "n1")], READY).state is ServiceState.RUNNING
    assert st.status_of([], READY).state is ServiceState.ABSENT
    failed = [task("x", "failed", code=3, at="2026-01-01T00:00:01Z", desired="shutdown"),
              task("y", "failed", code=7, at="2026-01-01T00:00:02Z", desired="shutdown"),
              task("z", "shutdown", desired="shutdown", at="2026-01-01T00:00:03Z")]
    status = st.status_of(failed, READY)
    assert (status.state, status.exit_code) == (ServiceState.EXITED, 7)
    gone = st.status_of([task("a", "running", "n3")], READY)  # only on a lost node
    assert gone.state is ServiceState.EXITED and not gone.wanted
    # Still scaled to 1: Swarm restarts it, so a failed start must scale it down.
    crashed = st.status_of(failed, READY, wanted=1)
    assert crashed.state is ServiceState.EXITED and crashed.wanted
    assert st.status_of([], READY, wanted=1).wanted


def test_newest_failure_leaves_out_what_failed_before_the_start() -> None:
    tasks = [task("old", "failed", at="2026-01-01T00:00:09Z", desired="shutdown"),
             task("new", "rejected", err="No such image: x", at="2026-01-01T00:00:01Z")]
    assert st.newest_failure(tasks)["ID"] == "old"  # type: ignore[index]
    found = st.newest_failure(tasks, after={"old"})
    assert found is not None and found["ID"] == "new"
    assert st.failure_text(found) == "task new rejected: No such image: x"
    assert st.newest_failure(tasks, after={"old", "new"}) is None


def test_lost_names_each_service_whose_running_task_stopped_running() -> None:
    names = {"svc1": "chat", "svc2": "embed", "other": "foreign"}
    before = st.running_by_service(names, [
        task("a", "running", "n2", service="svc1"),
        task("b", "running", "n1", service="svc2"),
        task("c", "running", "n1", service="svc9")], READY)  # not a service of the stack
    assert before == {"chat": frozenset({"a"}), "embed": frozenset({"b"}),
                      "chat#1": frozenset({"a"}), "embed#1": frozenset({"b"})}  # by slot too
    # n2 goes down: its task is lost although Swarm still lists it as running; embed's
    # task is replaced by another (a new ID) between two looks: lost as well.
    down = {"n1": "10.0.0.1"}
    after = st.running_by_service(names, [
        task("a", "running", "n2", service="svc1"),
        task("b2", "running", "n1", service="svc2")], down)
    assert st.lost(before, after) == ["chat", "chat#1", "embed", "embed#1"]
    assert st.lost(after, after) == []
    assert st.lost({}, before) == []  # a task that appears is no exit


def test_names_replicas_and_grace_from_a_service() -> None:
    assert st.full_name("models", "chat") == "models_chat"
    assert st.short_name("models", "models_chat") == "chat"
    service = {"Spec": {"Mode": {"Replicated": {"Replicas": 2}},
                        "TaskTemplate": {"ContainerSpec": {"StopGracePeriod": 30_000_000_000}}}}
    assert st.replicas(service) == 2
    assert st.stop_grace(service) == 30.0
    assert st.replicas({"Spec": {"Mode": {"Global": {}}}}) is None
    assert st.replicas({"Spec": {"Mode": {"Replicated": {}}}}) == 0
    assert st.stop_grace({"Spec": {"TaskTemplate": {"ContainerSpec": {}}}}) == 10.0


def test_a_slot_names_one_replica_of_a_scaled_service() -> None:
    assert slot_name("vox", 2) == "vox#2"
    assert split_slot("vox#2") == ("vox", 2)
    assert split_slot("vox") == ("vox", None)
    assert split_slot("vox#0") == ("vox#0", None)  # slots count from 1
    assert split_slot("#2") == ("#2", None)
    tasks = [task("a", "running", "n1", slot=1), task("b", "running", "n2", slot=2),
             task("b0", "shutdown", "n1", slot=2, desired="shutdown")]
    assert [t["ID"] for t in st.in_slot(tasks, 2)] == ["b", "b0"]
    assert st.in_slot(tasks, None) == tasks
    assert st.endpoints(st.in_slot(tasks, 2), READY) == [READY["n2"]]
    # what a stop waits for: running or on its way, on a ready node, wanted or not
    stopping = task("c", "running", "n1", slot=3, desired="shutdown")
    lost_node = task("d", "running", "n9", slot=4)
    assert [t["ID"] for t in st.live([*tasks, stopping, lost_node], READY)] == ["a", "b", "c"]
