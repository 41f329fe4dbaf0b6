"""Waiting for a freshly started server to become ready.

Ready means both: the health endpoint answered 200 and the container still
runs. The container is checked on every poll so that a server that crashes
while loading fails its held requests at once with its own log, instead of
keeping them until startup_timeout.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from supervisor.runtime.base import Runtime, RuntimeFailure

LOG_LINES = 20


class StartFailed(Exception):
    """The server did not become ready (or an operator stopped it); the message is shown
    to held clients with `code`."""

    def __init__(self, message: str, code: str = "model_start_failed") -> None:
        super().__init__(message)
        self.code = code


PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


async def probe(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=PROBE_TIMEOUT) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def await_ready(
    runtime: Runtime,
    service: str,
    session: aiohttp.ClientSession,
    health_url: str,
    *,
    startup_timeout: float,
    interval: float,
) -> None:
    """Return once ready; raise StartFailed (with the log tail) when it cannot be."""
    deadline = time.monotonic() + startup_timeout
    while True:
        healthy = await probe(session, health_url)
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
        if time.monotonic() >= deadline:
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
