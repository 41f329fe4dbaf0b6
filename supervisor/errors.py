"""Errors in the shape OpenAI clients parse: {"error": {"message", "type", "code"}}.

Every refusal the supervisor makes is a `Refusal` (or a subclass that names a
common case), and the proxy and the admin API each turn it into a response in
one place. A client library then raises its usual typed exception with a
readable message instead of choking on an HTML page or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


class Refusal(Exception):
    """A request the supervisor answers itself: status, OpenAI `code`, message, the
    seconds to wait before a retry, and the model it concerns ("" when not known)."""

    status = 400
    code = "invalid_request"
    retry_after: int | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: int | None = None, model: str = "") -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after
        self.model = model

    def response(self, **extra: Any) -> web.Response:
        return error_response(self.status, self.message, self.code,
                              retry_after=self.retry_after, extra=extra)


class BadRequest(Refusal):
    status, code = 400, "invalid_request"


class NotFound(Refusal):
    status, code = 404, "not_found"


class Conflict(Refusal):
    """An operator's request that makes no sense in the model's state."""

    status, code = 409, "conflict"


class StartFailed(Refusal):
    """The server did not become ready (or an operator stopped it): held clients get this."""

    status, code, retry_after = 503, "model_start_failed", 5


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


def error_payload(status: int, message: str, code: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {
        "message": message,
        "type": _TYPES.get(status, "server_error"),
        "param": None,
        "code": code,
        **(extra or {}),
    }}


@web.middleware
async def openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Whatever raised, the client gets the OpenAI error shape, never aiohttp's HTML page
    or a traceback; a response already under way can only be cut."""
    try:
        return await handler(request)
    except Refusal as exc:
        return exc.response()
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
