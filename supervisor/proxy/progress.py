"""Loading progress for a streaming client held through a cold start.

A client that streams sees nothing while a large model loads (1-3 minutes), and a proxy
in front of the supervisor cuts it (nginx's proxy_read_timeout is 60 s). With
`loading_progress` the response is committed early, `200` and `text/event-stream`, and an
SSE comment line goes out every few seconds; OpenAI clients ignore comments, so once the
model is ready its stream simply follows. The trade-off: the status is committed before
the model answers, so a failure after that can only be an error event in the stream.

Each report says where the request stands (lifecycle/waiting.py): its position among the
held requests, the ETA and the phase, in the comment
`: model M is starting (12 s; position 3, eta 18 s, phase starting): weights` (the server's
own phase, when known, last); a client that sends `X-Supervisor-Progress: events` gets
named events instead, `event: progress` with the same as JSON (OpenAI's clients do not
skip named events: only for clients that read them).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from supervisor.anatomy.service import ANATOMY
from supervisor.lifecycle.registry import Model
from supervisor.proxy.router import Body
from supervisor.refusal import Refusal
from supervisor.rules.table import State

HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
           "X-Supervisor-Loading-Progress": "true"}
ASK = "X-Supervisor-Progress"  # `events`: named SSE events instead of comments


def wanted(handle: Model, body: Body) -> bool:
    """A JSON request with `"stream": true` for a model that has the option and is not
    ready now (a ready one answers at once: nothing to report)."""
    if not handle.config.loading_progress or handle.state is State.READY or body.data is None:
        return False
    if b'"stream"' not in body.data:
        return False
    try:
        payload = json.loads(body.data)
    except ValueError:
        return False
    return isinstance(payload, dict) and payload.get("stream") is True


class LoadingProgress:
    def __init__(self, request: web.Request, handle: Model) -> None:
        self.request = request
        self.handle = handle
        self.response: web.StreamResponse | None = None
        self.events = request.headers.get(ASK, "").strip().lower() == "events"
        self.holder = asyncio.current_task()  # the request's: what the hold queue knows
        self._task = asyncio.create_task(self._report())

    async def _report(self) -> None:
        config = self.handle.config
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(config.loading_progress_after)
        response = web.StreamResponse(status=200, headers=HEADERS)
        await response.prepare(self.request)
        self.response = response
        while True:
            await response.write(self._line(loop.time() - began))
            await asyncio.sleep(config.loading_progress_every)

    def _line(self, waited: float) -> bytes:
        name, state = self.handle.name, self.handle.state.value
        anatomy = self.request.config_dict.get(ANATOMY)
        server = None if anatomy is None else anatomy.phase(name)  # anatomy/phases.py
        standing = self.handle.standing(self.holder)
        if self.events:
            report: dict[str, Any] = {"model": name, "state": state,
                                      "waited_seconds": round(waited, 1), "server_phase": server}
            if standing is not None:
                report.update(standing.to_json(), waited_seconds=round(standing.waited, 1))
            return b"event: progress\ndata: " + json.dumps(report).encode() + b"\n\n"
        where = ""
        if standing is not None:
            eta = "unknown" if standing.eta is None else f"{standing.eta:.0f} s"
            where = f"; position {standing.position}, eta {eta}, phase {standing.phase}"
        line = f": model {name} is {state} ({waited:.0f} s{where})"
        if server is not None:
            line += f": {server}"
        return line.encode() + b"\n\n"

    async def stop(self) -> web.StreamResponse | None:
        """End the reports; the committed response (None when none went out yet)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.response


async def end_with_error(response: web.StreamResponse, status: int, message: str,
                         code: str, **extra: Any) -> web.StreamResponse:
    """After the 200 went out, a failure is an OpenAI-shaped error event, then [DONE]."""
    error = {"message": message, "type": "server_error", "param": None, "code": code,
             "status": status, **extra}
    await response.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def refused(response: web.StreamResponse, refusal: Refusal) -> web.StreamResponse:
    return await end_with_error(response, refusal.status, refusal.message, refusal.code)
