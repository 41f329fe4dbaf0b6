"""The OpenAI-facing HTTP side: answer `/v1/models` from config, and forward every
other `/v1/...` request to its model's upstream once the model is ready.

Forwarding is byte-for-byte and chunk-by-chunk: compressed bodies stay
compressed, and each chunk (an SSE event while a model streams) is written to
the client as soon as the upstream sends it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.registry import Collector

from supervisor.clients.usage import keep_tail, tail_usage, tap_for
from supervisor.lifecycle.lease import Lease
from supervisor.lifecycle.registry import Model
from supervisor.proxy import progress
from supervisor.proxy.appkeys import CLIENT, GATE, JOURNAL, METRICS, REGISTRY, UPSTREAM, Handler
from supervisor.proxy.http_errors import error_response, openai_errors, refusal_response
from supervisor.proxy.policy import (
    CONTEXT_ERROR_PEEK,
    HOP_BY_HOP,
    RETRY_NEED,
    client_of,
    handed_need,
    may_be_too_long,
    retry_need,
)
from supervisor.proxy.refusals import aborted, reason
from supervisor.proxy.router import Body, resolve
from supervisor.refusal import Refusal
from supervisor.rules.table import State

log = logging.getLogger(__name__)

# aiohttp writes the upstream's Host itself; the handed-over need is the proxy's own.
_NOT_FORWARDED = HOP_BY_HOP | {"host", RETRY_NEED}


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    listed = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in _NOT_FORWARDED | listed
    )


def _model_entry(handle: Model) -> dict[str, object]:
    running = handle.state is not State.STOPPED
    replicas = {"replicas": [{"name": r.name, "state": r.state.value} for r in handle.replicas]
                } if handle.replicas else {}
    return {
        "id": handle.name,
        "object": "model",
        "created": 0,
        "owned_by": "model-supervisor",
        "aliases": handle.config.aliases,
        "state": handle.state.value,
        "profile": handle.profile.name if running else None,
        "profiles": [{"name": p.name, "max_model_len": p.max_model_len} for p in handle.profiles],
        **replicas,
    }


async def list_models(request: web.Request) -> web.Response:
    """The models the client's key may use."""
    client = request[CLIENT]
    handles = [h for h in request.app[REGISTRY].handles.values() if client.allows(h.name)]
    return web.json_response({"object": "list", "data": [_model_entry(h) for h in handles]})


async def get_model(request: web.Request) -> web.Response:
    try:
        handle = request.app[REGISTRY].get(request.match_info["model"])
        if not request[CLIENT].allows(handle.name):
            raise request[CLIENT].forbidden(handle.name)
    except Refusal as exc:
        return refusal_response(exc)
    return web.json_response(_model_entry(handle))


class _Again(Exception):
    """Send the request once more: the upstream said it is too long for its profile and a
    larger one exists (`tokens` is the larger need), or its container was found dead
    before the request reached it (held through the restart)."""

    def __init__(self, tokens: int | None, why: str) -> None:
        self.tokens = tokens
        self.why = why


def _refuse(request: web.Request, refusal: Refusal) -> web.Response:
    request.app[METRICS].refusal(refusal.model, reason(refusal))
    return refusal_response(refusal)


@web.middleware
async def client_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With client keys configured, every /v1 request needs one; checked before routing,
    so nothing starts for a request without a valid key."""
    if request.path.startswith("/v1/"):
        client = client_of(request.app[GATE], request.headers.get("Authorization"))
        if client is None:
            return error_response(401, "Incorrect API key provided. Send a valid key as "
                                  "'Authorization: Bearer <key>'.", "invalid_api_key")
        request[CLIENT] = client
    return await handler(request)


async def proxy(request: web.Request) -> web.StreamResponse:
    began = time.monotonic()
    gate = request.app[GATE]
    if gate.draining:
        return error_response(503, "The supervisor is in maintenance (drain) mode; retry later",
                              "maintenance", retry_after=math.ceil(gate.retry_after))
    try:
        routed = await resolve(request, request.app[REGISTRY])
    except Refusal as exc:
        return _refuse(request, exc)
    handle, body = routed.handle, routed.body
    client = request[CLIENT]
    if (refusal := client.admit(handle.name, began)) is not None:
        body.close()
        return _refuse(request, refusal)
    tokens = routed.need.tokens if routed.need else None
    # A body in memory or spooled to disk can be sent twice, and only once.
    retry = body.replayable
    if (least := handed_need(request.headers.get(RETRY_NEED))) is not None:
        tokens, retry = max(tokens or 0, least), False  # the fast path's try was the first
    reports = progress.LoadingProgress(request, handle) if progress.wanted(handle, body) else None
    committed: web.StreamResponse | None = None  # a 200 sent early by the loading progress
    try:
        while True:
            try:
                async with handle.lease(tokens, client.asker) as lease:
                    if reports is not None:
                        committed, reports = await reports.stop(), None
                    return await _forward(request, handle, body, lease, began, tokens,
                                          retry=retry, committed=committed,
                                          asked=routed.usage_asked)
            except _Again as again:
                log.info("model=%s sending a request again: %s", handle.name, again.why)
                tokens, retry = again.tokens, False
    except Refusal as exc:
        exc.model = handle.name
        if reports is not None:
            committed = await reports.stop()
        return await _answer(request, exc, committed)
    finally:
        client.done(began, time.monotonic())
        if reports is not None:
            await reports.stop()
        body.close()


async def _answer(request: web.Request, refusal: Refusal,
                  committed: web.StreamResponse | None) -> web.StreamResponse:
    """A refusal as an error response, or as an error event when a 200 already went out."""
    if committed is None:
        return _refuse(request, refusal)
    request.app[METRICS].refusal(refusal.model, reason(refusal))
    return await progress.refused(committed, refusal)


async def _forward(
    request: web.Request, handle: Model, body: Body, lease: Lease, began: float,
    tokens: int | None, *, retry: bool, committed: web.StreamResponse | None = None,
    asked: bool = False,
) -> web.StreamResponse:
    metrics = request.app[METRICS]
    if lease.cold_start:
        metrics.hold(handle.name, lease.hold_seconds)
    status, first_byte = 502, None
    headers = _end_to_end(request.headers)
    replica = lease.replica  # the handle that granted the lease: the model, or a replica
    headers.update(replica.upstream_headers)  # the backend's own key replaces the client's
    # The client's framing may not fit what is sent: an alias changes the length, and a
    # compressed body was decoded by aiohttp.
    headers.popall("Content-Length", None)
    if body.decoded:
        headers.popall("Content-Encoding", None)
    if body.length is not None:
        headers["Content-Length"] = str(body.length)
    response: web.StreamResponse | None = committed
    tail, usage = b"", None
    try:
        upstream = await request.app[UPSTREAM].request(
            request.method,
            replica.upstream + str(request.rel_url),
            headers=headers,
            data=body.forwardable(),
            allow_redirects=False,
        )
    except asyncio.CancelledError:
        if not lease.aborted:
            raise
        return await _aborted(request, handle, lease, committed)
    except aiohttp.ClientError as exc:
        if lease.aborted:
            return await _aborted(request, handle, lease, committed)
        if isinstance(exc, aiohttp.ServerTimeoutError):  # alive, but silent too long
            metrics.request(handle.name, 504, time.monotonic() - began, None,
                            cold_start=lease.cold_start)
            _journal(request, handle, lease, 504, began)
            message = f"model {handle.name!r} did not answer in time at {replica.upstream}"
            if committed is not None:
                return await progress.end_with_error(committed, 504, message,
                                                     "upstream_timeout")
            return error_response(504, message, "upstream_timeout")
        dead = await replica.upstream_failed()
        # Sent again only when it cannot have reached the server: the connect failed.
        if dead and retry and isinstance(exc, aiohttp.ClientConnectorError):
            raise _Again(tokens, f"its container was {dead}; starting it again") from None
        metrics.request(handle.name, 502, time.monotonic() - began, None,
                        cold_start=lease.cold_start)
        _journal(request, handle, lease, 502, began)
        message = f"model {handle.name!r} did not answer at {replica.upstream}: {exc}"
        if committed is not None:
            return await progress.end_with_error(committed, 502, message, "upstream_unreachable")
        return error_response(502, message, "upstream_unreachable")
    try:
        async with upstream:
            status = upstream.status
            first = b""
            if retry and may_be_too_long(status, tokens, lease.profile,
                                         replica.larger_profile(lease.profile)):
                while len(first) < CONTEXT_ERROR_PEEK and not upstream.content.at_eof():
                    first += await upstream.content.read(CONTEXT_ERROR_PEEK - len(first))
                if (need := retry_need(first, lease.profile)) is not None:
                    status = 0  # not answered: retried on a larger profile
                    raise _Again(need,
                                 f"profile {lease.profile.name} refused the length; "
                                 "retrying on a larger one")
            if committed is not None:
                if status != 200:  # too late for its status: its text as an error event
                    text = (first + await upstream.read()).decode(errors="replace")[:2000]
                    return await progress.end_with_error(committed, status, text,
                                                         "upstream_error")
            else:
                response = web.StreamResponse(status=status, reason=upstream.reason)
                response.headers.extend(_end_to_end(upstream.headers))
                response.headers["X-Supervisor-Profile"] = lease.profile.name
                if lease.cold_start:
                    response.headers["X-Supervisor-Cold-Start"] = "true"
                    response.headers["X-Supervisor-Hold-Seconds"] = f"{lease.hold_seconds:.3f}"
                if lease.evicted:
                    response.headers["X-Supervisor-Evicted"] = ", ".join(lease.evicted)
                await response.prepare(request)
            assert response is not None
            if first:
                await response.write(first)
                first_byte = time.monotonic()
            tap = tap_for([(k.encode(), v.encode()) for k, v in upstream.headers.items()
                           if k.lower() == "content-type"], asked=asked,
                          chunked="Content-Length" not in upstream.headers)
            async for chunk in upstream.content.iter_any():
                first_byte = first_byte or time.monotonic()
                if tap is not None:
                    chunk = tap.feed(chunk)
                else:
                    tail = keep_tail(tail, chunk)
                if chunk:
                    await response.write(chunk)
            if tap is not None:
                await response.write(tap.end())
                usage = tap.usage
            else:
                usage = tail_usage(tail)
            await response.write_eof()
            return response
    except asyncio.CancelledError:
        if not lease.aborted or (response is not None and response is not committed):
            raise  # a stream already under way is cut: its connection closes
        status = 503
        return await _aborted(request, handle, lease, committed)
    finally:
        if status:  # also when the client went away mid-stream
            ttfb = first_byte - began if first_byte else None
            metrics.request(handle.name, status, time.monotonic() - began, ttfb,
                            cold_start=lease.cold_start, hold=lease.hold_seconds,
                            first=lease.first)
            request[CLIENT].record(handle.name, time.monotonic() - began, lease.hold_seconds,
                                   usage if status == 200 else None)
            _journal(request, handle, lease, status, began)


def _journal(request: web.Request, handle: Model, lease: Lease, status: int,
             began: float) -> None:
    if (journal := request.app.get(JOURNAL)) is not None:
        journal.served(handle.name, lease.profile.name, began, time.monotonic(),
                       lease.hold_seconds, lease.start, status)


async def _aborted(request: web.Request, handle: Model, lease: Lease,
                   committed: web.StreamResponse | None) -> web.StreamResponse:
    """A force stop, or a server found dead, cancelled this request before its answer
    began."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    refusal = aborted(lease.replica, lease.aborted)  # with the replica's last error
    refusal.model = handle.name
    return await _answer(request, refusal, committed)


async def not_found(request: web.Request) -> web.Response:
    return error_response(404, f"No route for {request.method} {request.path}", "not_found")


def add_routes(app: web.Application, probes: dict[str, Handler],
               scrape: Callable[[], Collector] | None = None) -> None:
    """`scrape`: what GET /metrics renders (Metrics.handler)."""
    app.middlewares.extend((openai_errors, client_auth))
    for path, probe in probes.items():
        app.router.add_get(path, probe)
    app.router.add_get("/metrics", app[METRICS].handler(scrape))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_route("*", "/v1/{tail:.*}", proxy)
    app.router.add_route("*", "/{tail:.*}", not_found)
