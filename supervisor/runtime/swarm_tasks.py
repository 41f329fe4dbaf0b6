"""What the Swarm runtime reads out of the Docker API's answers: pure functions over the
dicts that `docker.APIClient.tasks()`, `.nodes()` and `.services()` return, so that task
and endpoint selection is tested without a Swarm (tests/unit/test_swarm_tasks.py).

A task counts as running only when Swarm still wants it (`DesiredState` running), it
reports `running`, and its node is `ready`: once a node is down Swarm keeps showing its
last tasks as running (nobody can tell otherwise) while it schedules replacements.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from supervisor.runtime.base import ServiceState, ServiceStatus, slot_name

STACK_LABEL = "com.docker.stack.namespace"
# Task states before `running`: the task will run unless it fails or is cancelled.
COMING = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing",
                    "ready", "starting"})
FAILED = frozenset({"failed", "rejected"})
UNPLACEABLE = "no suitable node"  # the scheduler's message on a task it cannot place

Task = Mapping[str, Any]
Node = Mapping[str, Any]


def full_name(stack: str, service: str) -> str:
    """`docker stack deploy` names a stack file's service `<stack>_<service>`."""
    return f"{stack}_{service}"


def short_name(stack: str, name: str) -> str:
    """The stack file's name of a deployed service (the config names it so)."""
    return name.removeprefix(f"{stack}_")


def node_addresses(nodes: Iterable[Node]) -> dict[str, str]:
    """Node ID -> the address it is reached at, for the nodes that are `ready` only.

    `Status.Addr` is the address the node talks to the manager from; a manager may report
    0.0.0.0 there, and then its advertised `ManagerStatus.Addr` (host:port) is used.
    """
    ready = {}
    for node in nodes:
        status = node.get("Status") or {}
        if status.get("State") != "ready":
            continue
        addr = status.get("Addr") or ""
        if addr in ("", "0.0.0.0"):
            manager = (node.get("ManagerStatus") or {}).get("Addr") or ""
            addr = manager.rsplit(":", 1)[0].strip("[]")
        if addr:
            ready[node["ID"]] = addr
    return ready


def _state(task: Task) -> str:
    return str((task.get("Status") or {}).get("State", ""))


def _wanted(task: Task) -> bool:
    return task.get("DesiredState") == "running"


def running(tasks: Iterable[Task], ready: Mapping[str, str]) -> list[Task]:
    """The tasks that serve now: wanted, running, on a ready node (by slot, then ID)."""
    found = [t for t in tasks
             if _wanted(t) and _state(t) == "running" and t.get("NodeID") in ready]
    return sorted(found, key=lambda t: (t.get("Slot") or 0, t["ID"]))


def endpoints(tasks: Iterable[Task], ready: Mapping[str, str]) -> list[str]:
    """The address of the node of each running task, in task order."""
    return [ready[t["NodeID"]] for t in running(tasks, ready)]


def coming(tasks: Iterable[Task]) -> list[Task]:
    """Tasks on their way to `running`: wanted now, or (desired `ready`) after the restart
    policy's delay, as Swarm's replacement for a failed task or one on a lost node is."""
    return [t for t in tasks
            if t.get("DesiredState") in ("ready", "running") and _state(t) in COMING]


def unplaceable(tasks: Iterable[Task]) -> str | None:
    """The scheduler's reason when a wanted task waits for a node it cannot find
    (its node is down, no node has the resources, a constraint matches none)."""
    for task in coming(tasks):
        error = str((task.get("Status") or {}).get("Err") or "")
        if UNPLACEABLE in error:
            return error
    return None


def newest_failure(tasks: Iterable[Task], after: Iterable[str] = ()) -> Task | None:
    """The most recent failed or rejected task, leaving out the task IDs in `after`
    (those that had failed before a start began)."""
    old = set(after)
    failed = [t for t in tasks if _state(t) in FAILED and t["ID"] not in old]
    return max(failed, key=_timestamp, default=None)


def failure_text(task: Task) -> str:
    status = task.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    text = status.get("Err") or status.get("Message") or status.get("State")
    return f"task {task['ID'][:12]} {status.get('State')}: {text}" + (
        f" (exit code {code})" if code else "")


def _timestamp(task: Task) -> str:
    # RFC 3339 with nanoseconds, all in UTC ("Z"): compares as text.
    return str((task.get("Status") or {}).get("Timestamp") or task.get("CreatedAt") or "")


def status_of(tasks: Iterable[Task], ready: Mapping[str, str],
              wanted: int = 0) -> ServiceStatus:
    """RUNNING with a running task; EXITED (with the code of its newest failed task) when
    it had tasks but none runs; ABSENT without tasks. `wanted`: the service's replica
    count: above 0, Swarm brings a task back on its own (`ServiceStatus.wanted`)."""
    tasks = list(tasks)
    if running(tasks, ready):
        return ServiceStatus(ServiceState.RUNNING)
    again = wanted > 0
    if not tasks:
        return ServiceStatus(ServiceState.ABSENT, wanted=again)
    failed = newest_failure(tasks)
    code = None
    if failed is not None:
        code = ((failed.get("Status") or {}).get("ContainerStatus") or {}).get("ExitCode")
    return ServiceStatus(ServiceState.EXITED, exit_code=code, wanted=again)


def in_slot(tasks: Iterable[Task], slot: int | None) -> list[Task]:
    """The tasks of one slot of a replicated service (a replacement keeps its slot);
    every task for None."""
    return [t for t in tasks if slot is None or t.get("Slot") == slot]


def live(tasks: Iterable[Task], ready: Mapping[str, str]) -> list[Task]:
    """Tasks that run or are about to, wanted or not (a task being stopped still runs),
    on a node that is ready: a task on a node that is down cannot be stopped until it is
    back, so a stop does not wait for it."""
    return [t for t in tasks if _state(t) in (*COMING, "running")
            and (not t.get("NodeID") or t["NodeID"] in ready)]


def running_by_service(names: Mapping[str, str], tasks: Iterable[Task],
                       ready: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """Service name -> the IDs of its running tasks, for the services in `names`
    (service ID -> name) that have any; each slot's too, by its slot name (`vox#2`), for
    the replicas of a scalable model."""
    found: dict[str, set[str]] = {}
    for task in running(tasks, ready):
        name = names.get(task.get("ServiceID", ""))
        if name is not None:
            found.setdefault(name, set()).add(task["ID"])
            if task.get("Slot"):
                found.setdefault(slot_name(name, int(task["Slot"])), set()).add(task["ID"])
    return {name: frozenset(ids) for name, ids in found.items()}


def lost(before: Mapping[str, frozenset[str]],
         after: Mapping[str, frozenset[str]]) -> list[str]:
    """Services of which a task that ran before runs no more: it exited, failed, was
    stopped, or its node went down (Swarm may already run its replacement elsewhere)."""
    return sorted(name for name, ids in before.items() if ids - after.get(name, frozenset()))


def replicas(service: Mapping[str, Any]) -> int | None:
    """The replica count of a replicated service; None for a global one."""
    mode = (service.get("Spec") or {}).get("Mode") or {}
    if "Replicated" not in mode:
        return None
    return int((mode["Replicated"] or {}).get("Replicas") or 0)


def stop_grace(service: Mapping[str, Any]) -> float:
    """The service's own stop grace period (Swarm's default: 10 s), in seconds."""
    spec = ((service.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    nanos = spec.get("StopGracePeriod")
    return 10.0 if nanos is None else nanos / 1e9
