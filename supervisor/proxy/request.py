"""One request as the listener parsed it, and the one definition of a valid request
that both proxy paths share (the aiohttp application only ever sees what passed here,
re-framed by the listener: it can differ from the fast path in speed, never in what a
request gets).

The parser (llhttp, through httptools) already refuses what RFC 9112 calls faulty
framing: Content-Length with Transfer-Encoding, two lengths, a coding after `chunked`,
bare CR or LF, NUL, obs-fold. What it lets through and this module refuses: HTTP/1.1
without exactly one Host, HTTP/1.0 with Transfer-Encoding (RFC 9112 6.1), versions other
than 1.0 and 1.1, CONNECT, and heads past the configured limits.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from supervisor.proxy.policy import RETRY_NEED_BYTES
from supervisor.refusal import Refusal

if TYPE_CHECKING:
    from supervisor.clients.table import Client

log = logging.getLogger("supervisor.proxy.edge")

WARN_EVERY_SECONDS = 10.0
# The paths a request is answered by: supervisor_proxy_requests{path} (DataPlane.served).
FAST, APP, WEBSOCKET = ("fast",), ("app",), ("websocket",)
# A body the fast path cannot forward as it is: it must be decoded, or asked for first.
_NOT_PLAIN = frozenset((b"expect", b"content-encoding"))


class Rejected(Refusal):
    """A request the listener answers itself and then closes the connection; `reason`
    labels it in `supervisor_proxy_rejected_total`."""

    def __init__(self, status: int, code: str, message: str, reason: str) -> None:
        super().__init__(message, status=status, code=code)
        self.reason = reason


def malformed(detail: str) -> Rejected:
    return Rejected(400, "invalid_request", f"Malformed HTTP request: {detail}", "malformed")


class Request:
    """What the listener knows of one request; its body bytes go where `sink` says."""

    __slots__ = ("authorization", "body", "chunked", "client", "complete", "connection",
                 "discard", "fast", "headers", "keep_alive", "length", "method", "plain",
                 "sink", "upgrade", "url", "version")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []  # received and not yet given to anyone
        self.length: int | None = None  # Content-Length
        self.chunked = False
        self.keep_alive = True
        self.complete = False  # its body was read to its end
        self.fast = False  # small enough, and plain enough, for the fast path
        self.plain = True  # no coding, multipart, Expect: its body goes out as it came
        self.authorization: bytes | None = None
        self.client: Client | None = None  # whose key it carries (fast path candidates)
        self.connection: bytes | None = None  # its Connection header, when it has one
        self.upgrade: bytes | None = None  # the Upgrade it asks for (llhttp upgrades)
        self.sink: object | None = None  # the in-memory connection its body streams to
        self.discard = 0  # > 0: answered early; the rest of its body is dropped (bytes so far)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


def check(request: Request, method: bytes, version: str, upgrading: bool) -> None:
    """Called once its head is parsed: refuse what neither path may take; note its framing."""
    request.method, request.version = method, version
    if version not in ("1.1", "1.0"):
        raise Rejected(505, "http_version_not_supported",
                       f"HTTP/{version} is not supported: use HTTP/1.1", "unsupported_version")
    if method == b"CONNECT":
        raise Rejected(405, "method_not_allowed", "CONNECT is not supported: this is a "
                       "reverse proxy", "malformed")
    hosts = 0
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"host":
            hosts += 1
        elif lower == b"content-length":
            request.length = int(value)  # llhttp checked its digits and that it is alone
        elif lower == b"transfer-encoding":
            request.chunked = True  # llhttp checked that `chunked` is the final coding
            request.plain = False
        elif lower == b"authorization":
            request.authorization = value
        elif lower == b"connection":
            request.connection = value
        elif lower in _NOT_PLAIN or (
                lower == b"content-type" and value[:10].lower() == b"multipart/"):
            request.plain = False
        elif lower == b"upgrade" and upgrading:
            request.upgrade = value.strip().lower()
    if upgrading and request.upgrade is None:
        request.upgrade = b""  # llhttp stops at its head whatever: _upgrade decides
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise malformed("HTTP/1.1 needs exactly one Host header field"
                        if hosts == 0 else "more than one Host header field")
    if request.chunked and version == "1.0":
        raise malformed("Transfer-Encoding in an HTTP/1.0 request")


def app_head(request: Request, need: int | None = None) -> bytes:
    """The head the aiohttp application reads: the request as parsed, less an upgrade the
    proxy does not make (h2c is answered over HTTP/1.1), with `need` when the fast path
    found it too long for its profile (policy.RETRY_NEED; a client's own is dropped)."""
    lines = [request.method, b" ", request.url, b" HTTP/", request.version.encode(), b"\r\n"]
    for name, value in request.headers:
        lower = name.lower()
        if lower == RETRY_NEED_BYTES:
            continue
        if lower == b"upgrade" and request.upgrade is not None:
            continue
        if lower == b"connection" and request.upgrade is not None:
            tokens = [t for t in value.split(b",") if t.strip().lower() != b"upgrade"]
            if not tokens:
                continue
            value = b",".join(tokens).strip()
        lines += (name, b": ", value, b"\r\n")
    if need is not None:
        lines += (RETRY_NEED_BYTES, b": ", b"%d" % need, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class Warnings:
    """Malformed input is one WARNING line, at most one every WARN_EVERY_SECONDS, with the
    count of those not logged: a client cannot flood the log."""

    def __init__(self) -> None:
        self._last = 0.0
        self._quiet = 0

    def __call__(self, peer: object, rejected: Rejected) -> None:
        now = time.monotonic()
        if now - self._last < WARN_EVERY_SECONDS:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last such line)" if self._quiet else ""
        self._last, self._quiet = now, 0
        log.warning("refused a request from %s: %d %s%s", peer, rejected.status,
                    rejected.message, more)

