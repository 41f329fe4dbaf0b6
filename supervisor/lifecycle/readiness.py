"""Waiting for a freshly started server to become ready.

Ready means both: the health endpoint answered 200 and the container still
runs. The container is checked on every poll so that a server that crashes
while loading fails its held requests at once with its own log, instead of
keeping them until startup_timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from supervisor.refusal import StartFailed
from supervisor.runtime.base import Runtime, RuntimeFailure

LOG_LINES = 20
PROBE_TIMEOUT_SECONDS = 2.0

Probe = Callable[[str, float], Awaitable[bool]]  # (health URL, timeout) -> answered 200


def http_probe(session: aiohttp.ClientSession) -> Probe:
    async def probe(url: str, limit: float = PROBE_TIMEOUT_SECONDS) -> bool:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=limit)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return probe


async def await_ready(
    runtime: Runtime,
    service: str,
    probe: Probe,
    health_url: str,
    *,
    startup_timeout: float,
    interval: float,
    now: Callable[[], float],
    began: float | None = None,
) -> None:
    """Return once ready; raise StartFailed (with the log tail) when it cannot be.
    `startup_timeout` counts from `began` (the start of `compose up`), else from now."""
    deadline = (now() if began is None else began) + startup_timeout
    while True:
        healthy = await probe(health_url, PROBE_TIMEOUT_SECONDS)
        try:
            status = await runtime.status(service)
        except RuntimeFailure as exc:
            raise StartFailed(str(exc)) from exc
        if not status.running:
            tail = await _logs(runtime, service)
            code = f" with code {status.exit_code}" if status.exit_code is not None else ""
            raise StartFailed(
                f"the container of service {service!r} {status.state.value}{code} while "
                f"starting. Last log lines:\n{tail}"
            )
        if healthy:
            return
        if now() >= deadline:
            tail = await _logs(runtime, service)
            raise StartFailed(
                f"service {service!r} did not answer 200 on {health_url} within "
                f"{startup_timeout:.0f}s. Last log lines:\n{tail}"
            )
        await asyncio.sleep(interval)


async def _logs(runtime: Runtime, service: str) -> str:
    try:
        return await runtime.logs_tail(service, LOG_LINES) or "(no log output)"
    except RuntimeFailure as exc:
        return f"(log unavailable: {exc})"
