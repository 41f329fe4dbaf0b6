"""A request's body: received within the memory budget, forwarded once or, for a retry,
again.

Three shapes, by what reading them costs:

- bytes in memory: JSON bodies up to SMALL_BODY_BYTES, nearly every request. They reserve
  twice their length while they are parsed (the bytes and orjson's objects), then their
  length until the request ends;
- a spooled JSON body (spool.py): anything larger, or of unknown decoded length (chunked,
  or compressed: a 1 MB gzip body may inflate to 500 MB) once it passes SMALL_BODY_BYTES.
  It is written to disk as it arrives while `JsonScanner` validates it and `ModelFinder`
  notes the top-level `model` and its byte range, so an alias can be spliced in on the way
  out; it reserves only SPOOL_RESERVE_BYTES for its buffers;
- a multipart upload: the prefix read until its `model` field (spooled past 1 MiB), then
  the rest straight from the client's socket; it cannot be sent twice.

Not reserved: orjson's working memory while it parses (about 13 times what it reads, freed
at once). Parses run one at a time on the event loop (a small body whole, a spooled one in
64 KiB pieces), so that is at most ~14 MiB however many requests arrive; the estimate of a
spooled body, in a worker thread, stays within the body's own SPOOL_RESERVE_BYTES.

Whatever the reason a body cannot be read (too large, invalid JSON, a broken compressed
stream or chunked framing, a client gone) it ends here as a Refusal in the OpenAI shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from supervisor.proxy.body_budget import BodyBudget, Reservation
from supervisor.proxy.jsonmodel import ROOT, ModelFinder, ModelValue
from supervisor.proxy.jsonscan import JsonError, JsonScanner, NotAnObject
from supervisor.proxy.spool import BLOCK_BYTES, Spool
from supervisor.refusal import BadRequest, Refusal

__all__ = ["PARSE_FACTOR", "SMALL_BODY_BYTES", "SPOOL_RESERVE_BYTES", "Body", "Received",
           "Splice", "Unreadable", "chunks", "decoded_by_aiohttp", "invalid_json",
           "receive_json", "too_large"]

SMALL_BODY_BYTES = 1 << 20
PARSE_FACTOR = 2  # a small body while it is parsed: its bytes and the parsed objects
# A spooled body's memory: what aiohttp buffers from the socket (<= 128 KiB), a block on its
# way to disk (256 KiB), the estimate's reads (a 1 MiB text piece, a 350 KB audio head), or
# a body of unknown length read into memory until it proves larger than 1 MiB.
SPOOL_RESERVE_BYTES = 2 << 20
READ_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Splice:
    """Bytes `start`..`end` of a spooled body are sent as `data` (the served model name)."""

    start: int
    end: int
    data: bytes


@dataclass(slots=True)
class Body:
    """The request body to forward (exactly one of `data`, `spool`, `head` is set)."""

    data: bytes | None = None
    spool: Spool | None = None
    splice: Splice | None = None
    head: IO[bytes] | None = None  # a multipart upload: the prefix read so far ...
    rest: web.Request | None = None  # ... and the request whose socket holds the rest
    reservation: Reservation | None = None
    decoded: bool = False  # aiohttp removed a Content-Encoding: the header must not go on

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent again (a retry on a larger profile)."""
        return self.data is not None or self.spool is not None

    @property
    def length(self) -> int | None:
        """The length to send as Content-Length; None: unknown (sent chunked)."""
        if self.data is not None:
            return len(self.data)
        if self.spool is not None:
            change = 0 if self.splice is None else (
                len(self.splice.data) - (self.splice.end - self.splice.start))
            return self.spool.size + change
        if self.rest is not None and not self.decoded:
            return self.rest.content_length
        return None

    def forwardable(self) -> bytes | AsyncIterator[bytes] | None:
        """The body for the upstream request; a new stream on each call for a spool."""
        if self.spool is not None:
            return self._from_spool(self.spool)
        if self.head is not None:
            return self._upload(self.head)
        return self.data

    async def _from_spool(self, spool: Spool) -> AsyncIterator[bytes]:
        cut = self.splice
        if cut is None:
            async for block in spool.stream(0, spool.size):
                yield block
            return
        async for block in spool.stream(0, cut.start):
            yield block
        yield cut.data
        async for block in spool.stream(cut.end, spool.size):
            yield block

    async def _upload(self, head: IO[bytes]) -> AsyncIterator[bytes]:
        assert self.rest is not None
        head.seek(0)
        while chunk := head.read(READ_CHUNK):
            yield chunk
        head.close()
        async for chunk in chunks(self.rest):
            yield chunk

    def close(self) -> None:
        """Free what the body holds: its file and its share of the memory budget."""
        if self.spool is not None:
            self.spool.close()
        if self.head is not None:
            self.head.close()
        if self.reservation is not None:
            self.reservation.release()


@dataclass(slots=True)
class Received:
    """A JSON body as read: in memory (`data`) or on disk (`spool`, with `model` found)."""

    reservation: Reservation
    decoded: bool
    data: bytes | None = None
    spool: Spool | None = None
    model: ModelValue | None = None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self.reservation.release()


_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})  # what aiohttp's parser inflates


def decoded_by_aiohttp(request: web.Request) -> bool:
    """Whether aiohttp inflated the body (its parser does for these Content-Encodings): the
    bytes read are not what the header says, and their length is not Content-Length."""
    encoding = request.headers.get("Content-Encoding", "")
    return encoding.isascii() and encoding.lower() in _DECODED


def too_large(limit: int) -> Refusal:
    return Refusal(f"The request body is too large: the limit is {limit} bytes", status=413,
                   code="body_too_large")


def invalid_json(exc: ValueError) -> BadRequest:
    if isinstance(exc, NotAnObject):
        return BadRequest("The request body must be a JSON object", code="invalid_json")
    return BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json")


class Unreadable(BadRequest):
    """A body whose stream broke (compressed data that does not inflate, broken chunked
    framing): the rest of the connection cannot be read either, so the answer says
    `Connection: close` rather than let the client send its next request into it."""

    code = "invalid_body"
    close_connection = True


def _unreadable(exc: Exception) -> BadRequest:
    return Unreadable(f"The request body cannot be read: {exc}")


async def receive_json(request: web.Request, budget: BodyBudget) -> Received:
    """Read a JSON body within the budget: small ones into memory, others to disk."""
    limit = request.client_max_size
    length = request.content_length
    if length is not None and length > limit:
        raise too_large(limit)
    decoded = decoded_by_aiohttp(request)
    small = length is not None and length <= SMALL_BODY_BYTES and not decoded
    need = length * PARSE_FACTOR if small and length is not None else SPOOL_RESERVE_BYTES
    reservation = budget.try_reserve(need) or await budget.reserve(need)
    try:
        if small:
            return Received(reservation, decoded, data=await request.read())
        spool_at_once = length is not None and not decoded  # known to be large
        return await _receive(request, Received(reservation, decoded), limit, spool_at_once)
    except BaseException as exc:
        reservation.release()
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            raise too_large(limit) from None
        if isinstance(exc, RequestPayloadError | HttpProcessingError | ConnectionError):
            raise _unreadable(exc) from None
        raise


async def chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body's chunks as aiohttp buffers them (bounded: its default read limits)."""
    while True:
        try:
            chunk = await request.content.readany()
        except (RequestPayloadError, HttpProcessingError, ConnectionError) as exc:
            raise _unreadable(exc) from None
        if not chunk:
            return
        yield chunk


async def _receive(request: web.Request, received: Received, limit: int,
                   spool_at_once: bool) -> Received:
    """To a spool, scanned as it arrives; a body of unknown length is kept in memory until
    it passes SMALL_BODY_BYTES."""
    pending = bytearray()
    total = 0
    spool = received.spool = Spool() if spool_at_once else None
    finder = ModelFinder()
    scanner = JsonScanner(ROOT, finder)
    try:
        async for chunk in chunks(request):
            total += len(chunk)
            if total > limit:
                raise too_large(limit)
            pending += chunk
            if spool is None:
                if total <= SMALL_BODY_BYTES:
                    continue
                spool = received.spool = Spool()
                scanner.feed(bytes(pending))
            else:
                scanner.feed(chunk)
            if len(pending) >= BLOCK_BYTES:
                block, pending = pending, bytearray()
                await spool.append(block)
        if spool is None:
            received.data = bytes(pending)
            return received
        if pending:
            await spool.append(pending)
        scanner.close()
    except BaseException as exc:
        if received.spool is not None:
            received.spool.close()
            received.spool = None
        if isinstance(exc, JsonError):
            raise invalid_json(exc) from None
        raise
    received.model = finder.value
    return received

