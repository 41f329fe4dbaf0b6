"""The one small interface between a model handle and whatever runs its server.

The proxy and the handle never learn whether a service is a Compose service, a
bare container or a process: they only call these methods. Implementations do
I/O and nothing else: no state, no timers, no decisions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class ServiceState(StrEnum):
    RUNNING = "running"
    EXITED = "exited"  # it ran and is gone: look at exit_code and the log
    ABSENT = "absent"  # never created, or removed


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    state: ServiceState
    exit_code: int | None = None
    # Not running, yet the runtime will bring it back on its own (a Swarm service still
    # scaled above 0 restarts a crashed task): a failed start must still stop it.
    wanted: bool = False

    @property
    def running(self) -> bool:
        return self.state is ServiceState.RUNNING


SLOT_MARK = "#"  # never part of a Compose or Swarm service name


def slot_name(service: str, slot: int) -> str:
    """The name of the `slot`-th replica (from 1) of a service that the runtime scales
    (`replicas: {min, max}`): `vox#2`. One string keeps the Runtime Protocol as it is: a
    runtime that scales reads the slot out of the name; the lifecycle never does."""
    return f"{service}{SLOT_MARK}{slot}"


def split_slot(name: str) -> tuple[str, int | None]:
    """(service, slot) of a slot name; (name, None) for a plain service name."""
    service, mark, slot = name.rpartition(SLOT_MARK)
    if mark and service and slot.isdigit() and int(slot) >= 1:
        return service, int(slot)
    return name, None


class RuntimeFailure(Exception):
    """A runtime command failed; the message is meant for the operator's log."""


class Runtime(Protocol):
    """Start, stop and inspect the services behind models. A runtime that scales (Swarm)
    also takes slot names (`slot_name`): each method then acts on that one replica."""

    async def start(self, service: str) -> None:
        """Bring the service up and return once its container runs (not once it is healthy)."""

    async def stop(self, service: str, grace: float) -> None:
        """Stop the service, giving it `grace` seconds after SIGTERM before a kill."""

    async def status(self, service: str) -> ServiceStatus: ...

    async def logs_tail(self, service: str, lines: int) -> str:
        """The last lines of the service's log, for errors that explain a failed start."""

    async def running_services(self) -> set[str]:
        """Services of this supervisor's own project that run now, found by labels (adopt)."""

    async def endpoints(self, service: str) -> list[str]:
        """The host address of the node each running task of the service is on (Swarm):
        requests go to the configured upstream with its host replaced by one of them.
        [] means: the upstream as configured (Compose: this host)."""

    async def scale(self, service: str, replicas: int) -> None:
        """Ask for `replicas` running copies of the service and return without waiting;
        RuntimeFailure where the runtime cannot run copies of one service."""

    async def ping(self) -> None:
        """Raise RuntimeFailure when the runtime's daemon cannot be reached."""

    def exits(self) -> AsyncIterator[str]:
        """The services of this project whose container exits, as it happens (Docker
        events); raises RuntimeFailure when the daemon's stream breaks."""
        ...
