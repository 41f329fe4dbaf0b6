"""Refusals that both forwarding paths (routes.py, fastpath.py) answer with, and the
bounded `reason` label each is counted under."""

from __future__ import annotations

from supervisor.lifecycle.lease import Upstream
from supervisor.observe.metrics import RefusalReason
from supervisor.refusal import Refusal

# Refusals by the error code the client sees, for the metrics' bounded `reason` label.
_REASONS: dict[str, RefusalReason] = {
    "model_not_found": "unknown_model",
    "context_length_exceeded": "context_length",
    "model_overloaded": "overflow",
    "hold_timeout": "hold_timeout",
    "model_start_failed": "start_failed",
    "model_stopped": "stopped",
    "shutting_down": "stopped",
    "upstream_died": "upstream_died",
    "runtime_unavailable": "runtime_unavailable",
    "body_memory_exhausted": "overflow",
    "model_not_allowed": "model_not_allowed",
    "rate_limited": "rate_limited",
}


def reason(refusal: Refusal) -> RefusalReason:
    return _REASONS.get(refusal.code, "bad_request")


def aborted(handle: Upstream, code: str | None) -> Refusal:
    """A force stop, or a server found dead, ended a request before its answer began."""
    if code == "upstream_died":
        return Refusal(f"model {handle.name!r} stopped answering while this request was in "
                       f"flight ({handle.last_error}); it is being restarted, retry later",
                       status=502, code="upstream_died", retry_after=5, model=handle.name)
    return Refusal(f"model {handle.name!r} was stopped by an operator (force) while this "
                   "request was in flight; retry later", status=503, code="model_stopped",
                   retry_after=5, model=handle.name)
