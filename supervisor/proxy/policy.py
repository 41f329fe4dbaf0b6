"""The rules both forwarding paths apply, in one place: the fast path (fastpath.py,
exchange.py, fastwire.py) and the application (routes.py) ask here who may be forwarded,
which header fields stay on this side of the proxy, and when an answer means "too long for
this profile, send it again to a larger one"."""

from __future__ import annotations

from supervisor.clients.table import Client
from supervisor.proxy.gate import Gate
from supervisor.rules.profiles import Profile

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded (either way).
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
))
HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)  # as the fast path reads them

# The need the fast path hands over with a request it read back as too long: a field of the
# re-framed head (request.app_head writes it, and drops any the client sent), read by the
# application and never forwarded.
RETRY_NEED = "x-supervisor-retry-need"
RETRY_NEED_BYTES = RETRY_NEED.encode()

# vLLM's 400 when a prompt exceeds max_model_len: "This model's maximum context length is ..."
CONTEXT_ERROR_TEXT = b"maximum context length"
CONTEXT_ERROR_PEEK = 64 << 10  # how much of such a 400 is read before it is judged


def client_of(gate: Gate, authorization: bytes | str | None) -> Client | None:
    """Whose key an `Authorization` field carries; None when keys are configured and it
    carries none of them (401)."""
    return gate.clients.identify(authorization)


def forwarded_client(gate: Gate, authorization: bytes | str | None) -> Client | None:
    """Whose request is forwarded as it is: not in drain mode, and a client's key; None:
    the application answers it (503 or 401)."""
    return None if gate.draining else client_of(gate, authorization)


def may_be_too_long(status: int, tokens: int | None, profile: Profile,
                    larger: Profile | None) -> bool:
    """Read this answer whole before the client sees it: a 400 to a request whose need is
    known, from a profile with a length limit, with a larger profile to go to."""
    return (status == 400 and tokens is not None and bool(profile.max_model_len)
            and larger is not None)


def retry_need(body: bytes, profile: Profile) -> int | None:
    """The server said the request is too long for `profile`: the need to send it again
    with (one past the profile's length), else None."""
    if profile.max_model_len and CONTEXT_ERROR_TEXT in body:
        return profile.max_model_len + 1
    return None


def handed_need(value: str | None) -> int | None:
    """The need in a re-framed request's RETRY_NEED field (None: a first try)."""
    return int(value) if value is not None and value.isdigit() else None
