"""From an incoming request to the model it is for, what it needs, and the body to forward.

JSON bodies are read whole (they must be parsed anyway). Multipart uploads
(audio files of 150 MB) are read only until their `model` field is seen (and,
for a model with context limits, the audio file's header); the bytes read so
far wait in a spool that moves to disk past 1 MiB, and the rest of the upload
is streamed to the upstream straight from the client's socket.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any

from aiohttp import web

from supervisor.errors import BadRequest, Refusal
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.profiles import largest, max_audio_seconds
from supervisor.lifecycle.registry import Registry
from supervisor.proxy.audio import HEAD_BYTES
from supervisor.proxy.estimate import Need, describe
from supervisor.proxy.multipart import ModelFieldScanner, boundary_of, file_part_head

SPOOL_MEMORY_BYTES = 1 << 20
READ_CHUNK = 1 << 16
INLINE_ESTIMATE_BYTES = 64 << 10  # larger bodies are tokenized in a thread
FILE_HEAD_WINDOW = HEAD_BYTES + (256 << 10)  # where a form's file part and its header lie


@dataclass(slots=True)
class Body:
    """The request body to forward: whole bytes, or a spooled prefix plus the unread rest."""

    data: bytes | None = None
    spool: IO[bytes] | None = None
    rest: web.Request | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        assert self.spool is not None and self.rest is not None
        self.spool.seek(0)
        while chunk := self.spool.read(READ_CHUNK):
            yield chunk
        self.spool.close()
        async for chunk in self.rest.content.iter_chunked(READ_CHUNK):
            yield chunk

    def forwardable(self) -> bytes | AsyncIterator[bytes] | None:
        return self.data if self.spool is None else self.stream()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


@dataclass(slots=True)
class Routed:
    handle: ModelHandle
    body: Body
    need: Need | None  # None when the model has no context limits to route on


async def resolve(request: web.Request, registry: Registry) -> Routed:
    """Find the model and estimate the need; raise a Refusal for what cannot be served."""
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is not None:
        routed = await _multipart(request, registry, boundary)
    else:
        data = await _read(request)
        payload = _json_object(data)
        model = _model_of(payload)
        handle = registry.get(model)
        if model != handle.served_name:  # an alias: the server knows only its own name
            payload["model"] = handle.served_name
            data = json.dumps(payload, ensure_ascii=False).encode()
        need = None
        if handle.estimator is not None:
            estimate = handle.estimator.for_json
            need = (
                estimate(payload)
                if len(data) <= INLINE_ESTIMATE_BYTES
                else await asyncio.to_thread(estimate, payload)
            )
        routed = Routed(handle, Body(data=data), need)
    try:
        _refuse_what_fits_nowhere(routed)
    except Refusal:
        routed.body.close()
        raise
    return routed


async def _read(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise Refusal(f"The request body is too large: {exc.text}", status=413,
                      code="body_too_large") from None


def _json_object(data: bytes) -> dict[str, Any]:
    if not data:
        raise BadRequest("The request has no body; send JSON with `model`", code="missing_model")
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object", code="invalid_json")
    return payload


def _model_of(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("The request body has no `model` string", code="missing_model")
    return model


async def _multipart(request: web.Request, registry: Registry, boundary: str) -> Routed:
    scanner = ModelFieldScanner(boundary)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    chunks = request.content.iter_chunked(READ_CHUNK)
    async for chunk in chunks:
        spool.write(chunk)
        scanner.feed(chunk)
        if scanner.done:
            break
    if scanner.model is None:
        spool.close()
        reason = scanner.error or "it has no `model` field"
        raise BadRequest(f"Cannot read the multipart form: {reason}", code="missing_model")
    try:
        handle = registry.get(scanner.model)
    except Refusal:
        spool.close()
        raise
    need = None
    if handle.estimator is not None:
        # Read on until the audio file's header is in the spool (a few hundred KiB at most);
        # look only at the spool's start, never at a whole upload spooled to disk.
        async for chunk in chunks:
            spool.write(chunk)
            if spool.tell() >= FILE_HEAD_WINDOW:
                break
        spool.seek(0)
        found = file_part_head(spool.read(FILE_HEAD_WINDOW), boundary, HEAD_BYTES)
        spool.seek(0, 2)
        head, total = b"", None
        if found is not None:
            offset, head = found
            if request.content_length is not None:
                total = request.content_length - offset
        need = handle.estimator.for_upload(head, total)
    return Routed(handle, Body(spool=spool, rest=request), need)


def _refuse_what_fits_nowhere(routed: Routed) -> None:
    need, handle = routed.need, routed.handle
    if need is None:
        return
    biggest = largest(handle.profiles)
    if biggest.fits(need.tokens):
        return
    message = (
        f"This request needs {describe(need)}, more than model {handle.name!r} can hold: "
        f"its largest profile {biggest.name!r} has max_model_len {biggest.max_model_len}."
    )
    if need.audio_seconds:
        seconds = max_audio_seconds(
            biggest, handle.config.reserved_tokens, handle.config.tokens_per_audio_second
        )
        message += (
            f" The longest audio it can take is {seconds:.0f} s ({_clock(seconds)}); "
            f"this audio is {need.audio_seconds:.0f} s ({_clock(need.audio_seconds)})."
        )
    for note in need.notes:
        message += f" Note: {note}."
    raise BadRequest(message, code="context_length_exceeded", model=handle.name)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
