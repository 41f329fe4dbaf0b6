"""Loading progress for a streaming client held through a cold start.

A client that streams sees nothing while a large model loads (1-3 minutes), and a proxy
in front of the supervisor cuts it (nginx's proxy_read_timeout is 60 s). With
`loading_progress` the response is committed early, `200` and `text/event-stream`, and an
SSE comment line goes out every few seconds; OpenAI clients ignore comments, so once the
model is ready its stream simply follows. The trade-off: the status is committed before
the model answers, so a failure after that can only be an error event in the stream.
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
            waited = loop.time() - began
            line = f": model {self.handle.name} is {self.handle.state.value} ({waited:.0f} s)"
            anatomy = self.request.config_dict.get(ANATOMY)
            phase = None if anatomy is None else anatomy.phase(self.handle.name)
            if phase is not None:
                line += f": {phase}"  # what the server does now (anatomy/phases.py)
            await response.write(line.encode() + b"\n\n")
            await asyncio.sleep(config.loading_progress_every)

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
