"""Every refusal the supervisor makes, as a value: a `Refusal` (or a subclass that names a
common case) carries the status, the OpenAI `code`, the message and the seconds to wait,
and `error_payload` gives the body OpenAI clients parse: {"error": {"message", "type",
"code"}}. Pure: the lifecycle raises these; the proxy and the admin API render them as
HTTP responses in one place (`proxy/http_errors.py`).
"""

from __future__ import annotations

from typing import Any

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
    close_connection = False  # the rest of the connection cannot be read: answer and close

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


class ShuttingDown(Refusal):
    """The supervisor process is stopping: a held request cannot be served by it."""

    status, code, retry_after = 503, "shutting_down", 5


def error_payload(status: int, message: str, code: str,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {
        "message": message,
        "type": _TYPES.get(status, "server_error"),
        "param": None,
        "code": code,
        **(extra or {}),
    }}
