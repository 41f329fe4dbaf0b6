"""vLLM's sleep mode over HTTP: POST /sleep?level=N, POST /wake_up, GET /is_sleeping
(vLLM serves them with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode).

Level 2 drops the weights: vLLM's documented way back is to wake the weights' memory
(`/wake_up?tags=weights`), load them in place (`/collective_rpc` `reload_weights`), then
wake the KV cache (`/wake_up?tags=kv_cache`). A sleeping vLLM ignores a second /sleep
("Executor is already sleeping"), so going from level 1 to 2 is a wake, then a sleep.

A request sent to a sleeping vLLM hangs, so the handle holds requests until a
wake-up call has returned; this module only makes the calls.
"""

from __future__ import annotations

import json

import aiohttp


class SleepFailed(Exception):
    """The server refused or did not answer a sleep or wake-up call."""


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
    limit: float, payload: dict[str, str] | None = None,
) -> bytes:
    try:
        async with session.request(method, url, headers=headers, json=payload,
                                   timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            body = await resp.read()
            if resp.status >= 300:
                text = body.decode(errors="replace")[:300]
                raise SleepFailed(f"{method} {url} answered {resp.status}: {text}")
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SleepFailed(f"{method} {url} failed: {exc!r}") from exc


async def sleep(session: aiohttp.ClientSession, upstream: str, level: int,
                headers: dict[str, str], limit: float) -> None:
    await _call(session, "POST", f"{upstream}/sleep?level={level}", headers, limit)


async def wake_up(session: aiohttp.ClientSession, upstream: str,
                  headers: dict[str, str], limit: float, level: int = 1) -> None:
    """Wake from `level`; from 2 (or an unknown level: an adopted sleeper) the weights are
    read again from the model's files."""
    if level < 2:
        await _call(session, "POST", f"{upstream}/wake_up", headers, limit)
        return
    await _call(session, "POST", f"{upstream}/wake_up?tags=weights", headers, limit)
    await _call(session, "POST", f"{upstream}/collective_rpc", headers, limit,
                {"method": "reload_weights"})
    await _call(session, "POST", f"{upstream}/wake_up?tags=kv_cache", headers, limit)


async def is_sleeping(session: aiohttp.ClientSession, upstream: str,
                      headers: dict[str, str], limit: float) -> bool:
    body = await _call(session, "GET", f"{upstream}/is_sleeping", headers, limit)
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise SleepFailed(f"GET {upstream}/is_sleeping: not JSON") from exc
    return isinstance(answer, dict) and answer.get("is_sleeping") is True
