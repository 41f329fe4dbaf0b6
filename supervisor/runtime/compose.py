"""Compose services as the runtime: the `docker compose` v2 CLI starts and stops
them (so profiles, env files and depends_on behave exactly as for an operator),
and the Docker SDK inspects them by Compose's own labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

from supervisor.config import ComposeConfig
from supervisor.runtime.base import RuntimeFailure, ServiceState, ServiceStatus

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
T = TypeVar("T")
COMPOSE_GRACE = 30.0  # seconds a cancelled `docker compose` may take to finish


def compose_command(config: ComposeConfig) -> list[str]:
    """`docker compose -f FILE [--env-file F] -p PROJECT`: the runtime and check-config
    call Compose the same way."""
    cmd = [*config.command, "-f", str(config.file)]
    if config.env_file is not None:
        cmd += ["--env-file", str(config.env_file)]
    return [*cmd, "-p", config.project]


class ComposeRuntime:
    def __init__(self, config: ComposeConfig) -> None:
        self._config = config

    @cached_property
    def _docker(self) -> Any:
        return docker.from_env()

    async def _compose(self, *args: str) -> str:
        cmd = [*compose_command(self._config), *args]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=Path(self._config.file).parent,
        )
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            # Let Compose finish what it began (a half-done `up` leaves odd containers), but
            # not forever: a pull that hangs would keep startup_timeout from ending the start.
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), COMPOSE_GRACE)
            except TimeoutError:
                log.warning("`docker compose %s` still runs %.0fs after it was cancelled; "
                            "killing it (pid %d)", " ".join(args), COMPOSE_GRACE, proc.pid)
                proc.kill()  # our own child process, by its pid
                await proc.wait()
            raise
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeFailure(f"`docker compose {' '.join(args)}` failed: {text[-2000:]}")
        return text

    async def start(self, service: str) -> None:
        """Start the service's container again while its config is unchanged, so what it
        keeps inside (a compile cache, downloads) survives; `up` creates it, or recreates
        it when the operator changed its config, and the log says so."""
        before = await self._sdk(self._newest, service)
        if before is not None:
            said = await self._compose("--profile", "*", "config", "--hash", service)
            if before.labels.get(CONFIG_HASH_LABEL) == said.split()[-1]:
                await self._compose("start", service)
                return
        await self._compose("up", "--detach", service)
        after = await self._sdk(self._newest, service)
        if before is not None and after is not None and after.id != before.id:
            log.warning("service=%s: Compose recreated its container (its config changed): "
                        "what the old one kept inside (a compile cache not on a volume) is "
                        "gone, this start begins from nothing", service)

    async def stop(self, service: str, grace: float) -> None:
        await self._compose("stop", "--timeout", str(max(0, round(grace))), service)

    def _containers(self, service: str | None = None, *, running_only: bool = False) -> list[Any]:
        labels = [f"{PROJECT_LABEL}={self._config.project}"]
        if service is not None:
            labels.append(f"{SERVICE_LABEL}={service}")
        filters: dict[str, Any] = {"label": labels}
        if running_only:
            filters["status"] = "running"
        return list(self._docker.containers.list(all=not running_only, filters=filters))

    def _status(self, service: str) -> ServiceStatus:
        containers = self._containers(service)
        if not containers:
            return ServiceStatus(ServiceState.ABSENT)
        if any(c.status == "running" for c in containers):
            return ServiceStatus(ServiceState.RUNNING)
        code = containers[0].attrs.get("State", {}).get("ExitCode")
        return ServiceStatus(ServiceState.EXITED, exit_code=code)

    def _logs_tail(self, service: str, lines: int) -> str:
        containers = self._containers(service)
        if not containers:
            return ""
        raw: bytes = containers[0].logs(tail=lines, stdout=True, stderr=True)
        return raw.decode(errors="replace").rstrip()

    def _newest(self, service: str) -> Any | None:
        containers = self._containers(service)
        return max(containers, key=lambda c: c.attrs.get("Created", "")) if containers else None

    def log_stream(self, service: str, since: float) -> Any:
        """The log of the service's newest container from `since` on, stamped, followed
        (blocking; anatomy/follow.py reads it in a thread); None while it has none."""
        newest = self._newest(service)
        if newest is None:
            return None
        return newest.logs(stream=True, follow=True, timestamps=True, since=since)

    def _running_services(self) -> set[str]:
        return {c.labels.get(SERVICE_LABEL, "") for c in self._containers(running_only=True)}

    async def _sdk(self, call: Callable[..., T], *args: Any) -> T:
        """A Docker SDK call, in a thread (it blocks); any of its errors, including the
        connection errors of `requests`, become RuntimeFailure."""
        try:
            return await asyncio.to_thread(call, *args)
        except (docker.errors.DockerException, OSError) as exc:
            raise RuntimeFailure(f"Docker is not reachable: {exc}") from exc

    async def status(self, service: str) -> ServiceStatus:
        return await self._sdk(self._status, service)

    async def logs_tail(self, service: str, lines: int) -> str:
        return await self._sdk(self._logs_tail, service, lines)

    async def running_services(self) -> set[str]:
        return await self._sdk(self._running_services)

    async def endpoints(self, service: str) -> list[str]:
        return []  # on this host: the upstream as configured

    async def scale(self, service: str, replicas: int) -> None:
        raise RuntimeFailure(f"service {service!r}: Compose runs copies of a model as replica "
                             "services (`replicas: [...]`), not by a count")

    async def ping(self) -> None:
        await self._sdk(lambda: self._docker.ping())

    async def exits(self) -> AsyncIterator[str]:
        filters = {"type": "container", "event": ["die"],
                   "label": [f"{PROJECT_LABEL}={self._config.project}"]}
        stream = await self._sdk(lambda: self._docker.events(decode=True, filters=filters))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()

        def put(item: str | Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:  # the SDK's event stream blocks: its own thread, not the pool
            try:
                for event in stream:
                    service = (event.get("Actor") or {}).get("Attributes", {}).get(SERVICE_LABEL)
                    if service:
                        put(service)
                put(None)
            except Exception as exc:
                put(exc)

        threading.Thread(target=pump, name="docker-events", daemon=True).start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise RuntimeFailure(f"the Docker event stream broke: {item}")
                yield item
            raise RuntimeFailure("the Docker event stream ended")
        finally:
            await asyncio.to_thread(stream.close)
