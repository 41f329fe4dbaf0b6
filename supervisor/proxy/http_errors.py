"""Refusals as HTTP responses: a client library then raises its usual typed exception
with a readable message instead of choking on an HTML page or a traceback."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from supervisor.refusal import Refusal, error_payload

log = logging.getLogger("supervisor.errors")


def refusal_response(refusal: Refusal, **extra: Any) -> web.Response:
    """The refusal's OpenAI error response; `extra` adds fields beside `message`."""
    response = error_response(refusal.status, refusal.message, refusal.code,
                              retry_after=refusal.retry_after, extra=extra)
    if refusal.close_connection:
        response.force_close()
    return response


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """The OpenAI error body; `extra` adds fields beside `message` (e.g. reload's problems)."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    return web.json_response(error_payload(status, message, code, extra), status=status,
                             headers=all_headers)


@web.middleware
async def openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Whatever raised, the client gets the OpenAI error shape, never aiohttp's HTML page
    or a traceback; a response already under way can only be cut."""
    try:
        return await handler(request)
    except Refusal as exc:
        return refusal_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = (exc.reason or "error").lower().replace(" ", "_")
        return error_response(exc.status, exc.text or exc.reason, code, headers={
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")})
    except Exception:
        if request.writer is not None and request.writer.output_size > 0:
            raise
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "The supervisor failed on this request (see its log); "
                              "retry later", "internal_error")
