"""Errors in the shape OpenAI clients parse: {"error": {"message", "type", "code"}}.

Every refusal the supervisor makes goes through here, so a client library
raises its usual typed exception with a readable message instead of choking
on an HTML page or a traceback.
"""

from __future__ import annotations

from aiohttp import web

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": None,
            "code": code,
        }
    }
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    return web.json_response(body, status=status, headers=all_headers)
