"""Compose services as the runtime: the `docker compose` v2 CLI starts and stops
them (so profiles, env files and depends_on behave exactly as for an operator),
and the Docker SDK inspects them by Compose's own labels.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import docker
import docker.errors

from supervisor.config import ComposeConfig
from supervisor.runtime.base import RuntimeFailure, ServiceState, ServiceStatus

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class ComposeRuntime:
    def __init__(self, config: ComposeConfig) -> None:
        self._config = config

    @cached_property
    def _docker(self) -> Any:
        return docker.from_env()

    def _base_command(self) -> list[str]:
        cmd = [*self._config.command, "-f", str(self._config.file)]
        if self._config.env_file is not None:
            cmd += ["--env-file", str(self._config.env_file)]
        return [*cmd, "-p", self._config.project]

    async def _compose(self, *args: str) -> str:
        cmd = [*self._base_command(), *args]
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
            # Let Compose finish what it began: a half-done `up` leaves odd containers.
            await asyncio.shield(proc.wait())
            raise
        text = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeFailure(f"`docker compose {' '.join(args)}` failed: {text[-2000:]}")
        return text

    async def start(self, service: str) -> None:
        await self._compose("up", "--detach", service)

    async def stop(self, service: str, grace: float) -> None:
        await self._compose("stop", "--timeout", str(max(0, round(grace))), service)

    def _containers(self, service: str | None = None, *, running_only: bool = False) -> list[Any]:
        labels = [f"{PROJECT_LABEL}={self._config.project}"]
        if service is not None:
            labels.append(f"{SERVICE_LABEL}={service}")
        filters: dict[str, Any] = {"label": labels}
        if running_only:
            filters["status"] = "running"
        try:
            return list(self._docker.containers.list(all=not running_only, filters=filters))
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"Docker is not reachable: {exc}") from exc

    def _status(self, service: str) -> ServiceStatus:
        containers = self._containers(service)
        if not containers:
            return ServiceStatus(ServiceState.ABSENT)
        running = [c for c in containers if c.status == "running"]
        container = running[0] if running else containers[0]
        if running:
            return ServiceStatus(ServiceState.RUNNING, container_id=container.id)
        code = container.attrs.get("State", {}).get("ExitCode")
        return ServiceStatus(ServiceState.EXITED, exit_code=code, container_id=container.id)

    async def status(self, service: str) -> ServiceStatus:
        return await asyncio.to_thread(self._status, service)

    def _logs_tail(self, service: str, lines: int) -> str:
        containers = self._containers(service)
        if not containers:
            return ""
        raw: bytes = containers[0].logs(tail=lines, stdout=True, stderr=True)
        return raw.decode(errors="replace").rstrip()

    async def logs_tail(self, service: str, lines: int) -> str:
        return await asyncio.to_thread(self._logs_tail, service, lines)

    def _running_services(self) -> set[str]:
        return {c.labels.get(SERVICE_LABEL, "") for c in self._containers(running_only=True)}

    async def running_services(self) -> set[str]:
        return await asyncio.to_thread(self._running_services)

    def _ping(self) -> None:
        try:
            self._docker.ping()
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"Docker is not reachable: {exc}") from exc

    async def ping(self) -> None:
        await asyncio.to_thread(self._ping)
