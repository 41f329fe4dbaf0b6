"""Docker Swarm services as the runtime, through the manager's Docker API (the `docker` SDK,
every call in a thread).

The operator defines the services (`docker stack deploy -c FILE STACK`, usually with
`replicas: 0`); the supervisor only scales them. Swarm places each task (constraints,
node labels, generic resources for GPUs): the supervisor never picks a node, it reads
where a task landed and routes there (`endpoints`: the node's address, for servers on the
host network or on host-mode published ports).

What Engine 20.10 tells a manager, and so what `exits` follows: there are *no task
events*. A manager emits `node` events (`update` with `state.new: down` when a node stops
answering its heartbeats), `service` events (create, update, remove) and, for containers
on the manager itself only, `container` events. So `exits` lists the tasks of the stack
every `poll_interval` and at once after any of those events, and reports each service of
which a running task stopped running (it exited, failed, or its node went down); Swarm
may already be running its replacement elsewhere, which the next start then finds.

A slot name (`vox#2`, runtime/base.py) is one replica of a scalable model: the tasks of
that Swarm slot (1..replicas; Swarm's replacement for a failed task keeps its slot). Its
start scales the service to at least 2 and waits for slot 2's task; its stop scales to 1.
Swarm, not the supervisor, picks the task a scale-down removes (it balances the nodes),
so it may remove a lower slot and keep slot 2: the stop then scales down once more, until
no slot from 2 up runs, and the lower slot's replica sees its task exit (see docs/swarm.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from functools import cached_property
from typing import Any, TypeVar

import docker
import docker.errors

from supervisor.config import SwarmConfig
from supervisor.runtime import swarm_events
from supervisor.runtime import swarm_tasks as st
from supervisor.runtime.base import RuntimeFailure, ServiceState, ServiceStatus, split_slot

log = logging.getLogger(__name__)

T = TypeVar("T")
API_TIMEOUT = 30.0  # seconds for one Docker API call (a log read from a lost node hangs)
START_POLL = 0.2  # seconds between looks while a start or stop waits for its tasks
STOP_MARGIN = 10.0  # beyond the grace period, for Swarm to report the tasks gone
UPDATE_TRIES = 5  # a service update that raced another (`update out of sequence`)
LOG_LINES = 20

Snapshot = tuple[dict[str, Any], list[st.Task], dict[str, str]]  # service, tasks, nodes


def client(host: str | None) -> Any:
    """The SDK client for the manager: `host`, else DOCKER_HOST, else the local socket
    (TLS settings from the environment either way)."""
    environment = dict(os.environ)
    if host:
        environment["DOCKER_HOST"] = host
    return docker.from_env(environment=environment, timeout=int(API_TIMEOUT))


class SwarmRuntime:
    def __init__(self, config: SwarmConfig) -> None:
        self._config = config
        self.stack = config.stack

    @cached_property
    def _api(self) -> Any:
        return client(self._config.host).api

    async def _sdk(self, call: Callable[..., T], *args: Any) -> T:
        """A blocking SDK call in a thread; its errors (connection errors included)
        become RuntimeFailure."""
        try:
            return await asyncio.to_thread(call, *args)
        except docker.errors.NotFound as exc:
            raise RuntimeFailure(f"not found on the Swarm manager: {exc.explanation}") from exc
        except (docker.errors.DockerException, OSError) as exc:
            raise RuntimeFailure(f"the Swarm manager is not reachable: {exc}") from exc

    # -- blocking reads (in a thread) ------------------------------------------

    def _service(self, service: str) -> dict[str, Any]:
        service, _ = split_slot(service)
        name = st.full_name(self.stack, service)
        try:
            found: dict[str, Any] = self._api.inspect_service(name)
        except docker.errors.NotFound:
            raise RuntimeFailure(f"{service!r} is not a service of stack {self.stack!r} on "
                                 f"the Swarm manager (no service {name!r})") from None
        return found

    def _snapshot(self, service: str) -> Snapshot:
        """The service, its tasks (a slot name's: that slot's only), the ready nodes."""
        found = self._service(service)
        tasks = list(self._api.tasks(filters={"service": found["ID"]}))
        return found, st.in_slot(tasks, split_slot(service)[1]), st.node_addresses(
            self._api.nodes())

    def _running_map(self) -> dict[str, frozenset[str]]:
        services = self._api.services(filters={"label": f"{st.STACK_LABEL}={self.stack}"})
        names = {s["ID"]: st.short_name(self.stack, s["Spec"]["Name"]) for s in services}
        if not names:
            return {}
        tasks = self._api.tasks(filters={"service": list(names)})
        return st.running_by_service(names, tasks, st.node_addresses(self._api.nodes()))

    def _logs_tail(self, service: str, lines: int) -> str:
        found = self._service(service)
        chunks = self._api.service_logs(found["ID"], stdout=True, stderr=True, tail=lines,
                                        follow=False)
        return b"".join(chunks).decode(errors="replace").rstrip()

    def log_stream(self, service: str, since: float) -> Any:
        """The service's log from `since` on, stamped and followed (its tasks' lines)."""
        found = self._service(service)
        return self._api.service_logs(found["ID"], stdout=True, stderr=True, follow=True,
                                      timestamps=True, since=since)

    # -- blocking writes ------------------------------------------------------

    def _update(self, service: str, change: Callable[[dict[str, Any]], bool]) -> None:
        """Apply `change` to the service's spec as the manager has it now (it returns
        False when nothing is to change), retrying an update that raced another."""
        for attempt in range(UPDATE_TRIES):
            found = self._service(service)
            spec = found["Spec"]
            if st.replicas(found) is None:
                raise RuntimeFailure(f"service {service!r} is global: it cannot be scaled")
            if not change(spec):
                return
            try:
                self._api.update_service(
                    found["ID"], found["Version"]["Index"], task_template=spec["TaskTemplate"],
                    name=spec["Name"], labels=spec.get("Labels"), mode=spec["Mode"],
                    update_config=spec.get("UpdateConfig"),
                    rollback_config=spec.get("RollbackConfig"),
                    endpoint_spec=spec.get("EndpointSpec"))
                return
            except docker.errors.APIError as exc:
                if "out of sequence" not in str(exc) or attempt == UPDATE_TRIES - 1:
                    raise

    def _resize(self, service: str, size: Callable[[int], int]) -> None:
        """Replicas := size(the count the manager has now): concurrent starts (max) and
        stops (min) of several slots then never undo each other."""
        def change(spec: dict[str, Any]) -> bool:
            current = int(spec["Mode"]["Replicated"].get("Replicas", 0))
            spec["Mode"]["Replicated"]["Replicas"] = size(current)
            return size(current) != current

        self._update(service, change)

    def _set_replicas(self, service: str, replicas: int) -> None:
        self._resize(service, lambda _: replicas)

    def _scale_up(self, service: str) -> None:
        """At least one replica (a slot name: at least its slot). A plain service already
        asked for but with no task on its way (its restart policy gave up) gets a forced
        update, which makes Swarm start a new task; not a slot's: that restarts them all."""
        found, tasks, ready = self._snapshot(service)
        _, slot = split_slot(service)
        if (st.replicas(found) or 0) < (slot or 1):
            self._resize(service, lambda current: max(current, slot or 1))
        elif slot is None and not st.running(tasks, ready) and not st.coming(tasks):
            def force(spec: dict[str, Any]) -> bool:
                spec["TaskTemplate"]["ForceUpdate"] = spec["TaskTemplate"].get(
                    "ForceUpdate", 0) + 1
                return True

            self._update(service, force)

    # -- the Runtime Protocol ---------------------------------------------------

    async def start(self, service: str) -> None:
        """Scale to one replica (unless one already runs) and return once a task runs on
        a ready node. A start that fails or is cancelled scales back to 0: nothing is left
        waiting to run (and to take GPUs) unknown to the supervisor."""
        _, tasks, ready = await self._sdk(self._snapshot, service)
        if st.running(tasks, ready):
            return
        failed_before = {t["ID"] for t in tasks if t["Status"]["State"] in st.FAILED}
        up = asyncio.ensure_future(self._sdk(self._scale_up, service))
        try:
            await asyncio.shield(up)
            await self._await_running(service, failed_before)
        except BaseException:
            await asyncio.shield(self._give_up(service, up))
            raise

    async def _await_running(self, service: str, failed_before: set[str]) -> None:
        stalled_since: float | None = None
        while True:
            _, tasks, ready = await self._sdk(self._snapshot, service)
            if st.running(tasks, ready):
                return
            failed = st.newest_failure(tasks, after=failed_before)
            if failed is not None:
                try:
                    tail = await self.logs_tail(service, LOG_LINES) or "(no log output)"
                except RuntimeFailure as exc:
                    tail = f"(log unavailable: {exc})"
                raise RuntimeFailure(f"service {service!r} did not start: "
                                     f"{st.failure_text(failed)}. Last log lines:\n{tail}")
            reason = st.unplaceable(tasks) or (None if st.coming(tasks) else "no task")
            if reason is None:
                stalled_since = None
            else:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since >= self._config.unplaceable_timeout:
                    raise RuntimeFailure(
                        f"Swarm found no node for service {service!r} within "
                        f"{self._config.unplaceable_timeout:.0f}s: {reason}")
            await asyncio.sleep(START_POLL)

    async def _give_up(self, service: str, up: asyncio.Future[None]) -> None:
        await asyncio.gather(up, return_exceptions=True)  # its update must not come after ours
        below = (split_slot(service)[1] or 1) - 1
        try:
            await self._sdk(self._resize, service, lambda current: min(current, below))
        except RuntimeFailure as exc:
            log.error("service %s: cannot scale back to 0 after a failed start: %s",
                      service, exc)

    async def stop(self, service: str, grace: float) -> None:
        """Scale to 0 (slot n: to n-1, or lower while Swarm keeps slot n or above; see the
        module's docstring) and return once no such task runs on a ready node. Swarm stops
        each task with the service's own stop grace period (`stop_grace_period` in the
        stack file): each wait allows the longer of that and `grace`. Tasks on a node that
        is down cannot be stopped until it is back; they are not waited for."""
        found = await self._sdk(self._service, service)
        name, slot = split_slot(service)
        keep = (slot or 1) - 1
        limit = max(grace, st.stop_grace(found)) + STOP_MARGIN
        while True:
            await self._sdk(self._resize, service, lambda current, keep=keep: min(current, keep))
            deadline = time.monotonic() + limit
            while True:
                _, tasks, ready = await self._sdk(self._snapshot, name)
                left = st.live(tasks, ready)
                if not [t for t in left if (t.get("Slot") or 0) >= (slot or 0)]:
                    return
                if len(left) <= keep:
                    break  # Swarm removed a lower slot's task instead
                if time.monotonic() > deadline:
                    raise RuntimeFailure(f"service {service!r} still has {len(left)} task(s) "
                                         f"{limit:.0f}s after it was scaled to {keep}")
                await asyncio.sleep(START_POLL)
            keep -= 1
            log.warning("service %s: Swarm kept slot %s's task and removed another; "
                        "scaling %s to %d", service, slot, name, keep)

    async def scale(self, service: str, replicas: int) -> None:
        await self._sdk(self._set_replicas, service, replicas)

    async def status(self, service: str) -> ServiceStatus:
        try:
            found, tasks, ready = await self._sdk(self._snapshot, service)
        except RuntimeFailure as exc:
            if "is not a service of stack" in str(exc):
                return ServiceStatus(ServiceState.ABSENT)
            raise
        wanted = (st.replicas(found) or 0) >= (split_slot(service)[1] or 1)
        return st.status_of(tasks, ready, int(wanted))

    async def endpoints(self, service: str) -> list[str]:
        _, tasks, ready = await self._sdk(self._snapshot, service)
        return st.endpoints(tasks, ready)

    async def logs_tail(self, service: str, lines: int) -> str:
        return await self._sdk(self._logs_tail, service, lines)

    async def running_services(self) -> set[str]:
        return set(await self._sdk(self._running_map))

    async def ping(self) -> None:
        await self._sdk(lambda: self._api.ping())

    def exits(self) -> AsyncIterator[str]:
        return swarm_events.exits(
            lambda: self._sdk(lambda: self._api.events(decode=True,
                                                       filters=swarm_events.EVENTS)),
            lambda: self._sdk(self._running_map), self._config.poll_interval)


def read_services(config: SwarmConfig) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The stack's services on the manager by their stack-file name, or ({}, 'swarm.<key>:
    problem'), for check-config. Blocking."""
    where = config.host or "DOCKER_HOST"
    try:
        api = client(config.host).api
        swarm = api.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            return {}, (f"swarm.host: the Docker Engine at {where} is not a Swarm manager "
                        f"(swarm state: {swarm.get('LocalNodeState')})")
        services = api.services(filters={"label": f"{st.STACK_LABEL}={config.stack}"})
    except (docker.errors.DockerException, OSError) as exc:
        return {}, f"swarm.host: cannot reach the Docker API at {where}: {exc}"
    return {st.short_name(config.stack, s["Spec"]["Name"]): s for s in services}, None
