"""The bytes the fast path writes: request heads to model servers, response heads and
errors to clients (RFC 9112 framing; hop-by-hop fields per RFC 9110 7.6.1)."""

from __future__ import annotations

import time
from http import HTTPStatus

import orjson

from supervisor.clients.usage import EVENT_STREAM
from supervisor.lifecycle.lease import Upstream
from supervisor.proxy.policy import HOP_BY_HOP_BYTES
from supervisor.refusal import Refusal, error_payload
from supervisor.rules.profiles import Profile

_REQUEST_DROPS = HOP_BY_HOP_BYTES | {b"host", b"content-length"}  # both are written anew
_NO_BODY = frozenset((204, 304))

now = time.monotonic


_DROPS: dict[tuple[frozenset[bytes], bytes | None], frozenset[bytes]] = {}


def dropped(base: frozenset[bytes], connection: bytes | None) -> frozenset[bytes]:
    """`base` and the fields a Connection header names (hop-by-hop too), cached: servers
    and clients send the same few values again and again."""
    key = (base, connection)
    drop = _DROPS.get(key)
    if drop is None:
        if len(_DROPS) > 256:  # values a client chose: keep the cache bounded
            _DROPS.clear()
        listed = (frozenset(t.strip().lower() for t in connection.split(b","))
                  if connection else frozenset())
        drop = _DROPS[key] = base | listed
    return drop


def _connection(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name.lower() == b"connection":
            return value
    return None


def request_drops(replaced: frozenset[bytes]) -> frozenset[bytes]:
    """What a forwarded request loses besides its own Connection's fields: hop-by-hop
    fields, Host and Content-Length (written anew), the server's own key (`replaced`)."""
    return _REQUEST_DROPS | replaced


def request_head(url: bytes, headers: list[tuple[bytes, bytes]], host: bytes,
                 length: int, drops: frozenset[bytes], extra: bytes,
                 connection: bytes | None) -> bytes:
    """A POST's head for the server: the client's end-to-end fields, less `drops`
    (request_drops) and what its `connection` header names, plus `extra` (the key)."""
    drop = dropped(drops, connection)
    lines = [b"POST ", url, b" HTTP/1.1\r\nHost: ", host, b"\r\nContent-Length: ",
             b"%d" % length, b"\r\n"]
    for name, value in headers:
        if name.lower() not in drop:
            lines += (name, b": ", value, b"\r\n")
    lines += (extra, b"\r\n")
    return b"".join(lines)


def response_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                  profile: Profile, close: bool) -> tuple[bytes, bool, bool]:
    """The client's response head, whether its body goes chunked (the server's had no
    length: it was chunked, or it ran until the server closed), and whether it is an event
    stream (its first content type; seen here, on the walk the head takes anyway)."""
    drop = dropped(HOP_BY_HOP_BYTES, _connection(headers))
    chunked = status >= 200 and status not in _NO_BODY
    event_stream: bool | None = None
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-type" and event_stream is None:
            event_stream = value.lower().startswith(EVENT_STREAM)
        if lower == b"content-length":
            chunked = False
        elif lower in drop:
            continue
        lines += (name, b": ", value, b"\r\n")
    lines += (b"X-Supervisor-Profile: ", profile.name.encode(), b"\r\n")
    if chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), chunked, bool(event_stream)


def interim_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A 1xx relayed to the client, less its hop-by-hop fields."""
    drop = dropped(HOP_BY_HOP_BYTES, _connection(headers))
    lines = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in drop:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def error_response(refusal: Refusal, *, close: bool) -> bytes:
    """The OpenAI error shape, as routes.py's refusals answer it."""
    body = orjson.dumps(error_payload(refusal.status, refusal.message, refusal.code))
    try:
        phrase = HTTPStatus(refusal.status).phrase
    except ValueError:
        phrase = "Error"
    head = [f"HTTP/1.1 {refusal.status} {phrase}",
            "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(body)}"]
    if refusal.retry_after is not None:
        head.append(f"Retry-After: {refusal.retry_after}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def timed_out(handle: Upstream, error: str) -> Refusal:
    return Refusal(f"model {handle.name!r} did not answer in time at {handle.upstream}: "
                   f"{error}", status=504, code="upstream_timeout", model=handle.name)


def unreachable(handle: Upstream, error: str) -> Refusal:
    return Refusal(f"model {handle.name!r} did not answer at {handle.upstream}: {error}",
                   status=502, code="upstream_unreachable", model=handle.name)
