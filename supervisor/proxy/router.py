"""From an incoming request to the model it is for, what it needs, and the body to forward.

JSON bodies up to 1 MiB (nearly all) are read whole and parsed with orjson, which also
validates them: an invalid body gets `400 invalid_json` here rather than from the model
server. Larger ones are written to disk as they arrive and scanned on the way (body.py);
their `model` and, for a model with context limits, the texts and audio the estimate needs
are read from there (jsonestimate.py), never parsed into a second copy. An alias is
replaced by the served name in place, its byte range spliced (jsonmodel.py), so the rest of
the body reaches the server exactly as the client wrote it.

Multipart uploads (audio files of 150 MB) are read only until their `model` field is seen
(and, for a model with context limits, the audio file's header); the bytes read so far
wait in a spool that moves to disk past 1 MiB, and the rest of the upload is streamed to
the upstream straight from the client's socket.

Every body holds a share of the memory budget (body_budget.py) from before it is read until the
request ends.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from supervisor.clients.usage import ask_for_usage
from supervisor.lifecycle.registry import Model, Registry
from supervisor.lifecycle.servable import Catalog, Servable
from supervisor.proxy.body import (
    SPOOL_RESERVE_BYTES,
    Body,
    Received,
    Splice,
    chunks,
    decoded_by_aiohttp,
    invalid_json,
    receive_json,
)
from supervisor.proxy.body_budget import BODY_BUDGET, BodyBudget, Reservation
from supervisor.proxy.jsonestimate import estimate_spooled
from supervisor.proxy.jsonmodel import MAX_MODEL_BYTES, encoded_name, locate_model, splice
from supervisor.proxy.multipart import ModelFieldScanner, boundary_of, file_part_head
from supervisor.refusal import BadRequest, Refusal
from supervisor.rules.profiles import largest, max_audio_seconds
from supervisor.tokens.audio import HEAD_BYTES
from supervisor.tokens.estimate import RequestNeed, describe

__all__ = ["FILE_HEAD_WINDOW", "Body", "Routed", "refuse_unfitting", "resolve", "route_inline"]

SPOOL_MEMORY_BYTES = 1 << 20
INLINE_ESTIMATE_BYTES = 64 << 10  # larger bodies are tokenized in a thread
FILE_HEAD_WINDOW = HEAD_BYTES + (256 << 10)  # where a form's file part and its header lie


@dataclass(slots=True)
class Routed:
    handle: Model
    body: Body
    need: RequestNeed | None  # None when the model has no context limits to route on
    usage_asked: bool = False  # include_usage added: the client's stream loses that event


async def resolve(request: web.Request, registry: Registry) -> Routed:
    """Find the model and estimate the need; raise a Refusal for what cannot be served."""
    budget = request.app[BODY_BUDGET]
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is not None:
        routed = await _multipart(request, registry, boundary, budget)
    else:
        received = await receive_json(request, budget)
        try:
            if received.spool is None:
                routed = await _in_memory(received, registry)
            else:
                routed = await _spooled(received, registry)
        except BaseException:
            received.close()
            raise
    try:
        refuse_unfitting(routed.handle, routed.need)
    except Refusal:
        routed.body.close()
        raise
    return routed


def route_inline(data: bytes, registry: Catalog
                 ) -> tuple[Servable, bytes, RequestNeed | None, bool]:
    """A small JSON body's model, the body as the server must get it, what it needs, and
    whether usage was asked for it, all without waiting (the fast path's routing; it
    raises what `resolve` would)."""
    payload = _json_object(data)
    model = _model_of(payload)
    handle = registry.get(model)
    need = handle.estimator.for_json(payload) if handle.estimator is not None else None
    refuse_unfitting(handle, need)
    data = _served(data, model, handle)
    asked = ask_for_usage(payload, data)
    return handle, asked or data, need, asked is not None


async def _in_memory(received: Received, registry: Registry) -> Routed:
    data = received.data
    assert data is not None
    payload = _json_object(data)
    model = _model_of(payload)
    handle = registry.get(model)
    need = None
    if handle.estimator is not None:
        estimate = handle.estimator.for_json
        need = (
            estimate(payload)
            if len(data) <= INLINE_ESTIMATE_BYTES
            else await asyncio.to_thread(estimate, payload)
        )
    served = _served(data, model, handle)
    asked = ask_for_usage(payload, served)
    del payload
    received.reservation.shrink(len(data))  # the parsed copy is gone
    data = asked or served
    body = Body(data=data, reservation=received.reservation, decoded=received.decoded)
    return Routed(handle, body, need, asked is not None)


def _served(data: bytes, model: str, handle: Servable) -> bytes:
    """An alias replaced by the served name: the server knows only its own name."""
    if model == handle.served_name:
        return data
    value = locate_model(data, model)
    if value is None:  # cannot be: the parse found this string
        raise BadRequest("The request body has no `model` string", code="missing_model")
    return splice(data, value, handle.served_name)


async def _spooled(received: Received, registry: Registry) -> Routed:
    spool, value = received.spool, received.model
    assert spool is not None
    if value is not None and value.name is None:
        raise _model_too_long()
    if value is None or not value.name:
        raise BadRequest("The request body has no `model` string", code="missing_model")
    handle = registry.get(value.name)
    need = None
    if handle.estimator is not None:
        need = await asyncio.to_thread(estimate_spooled, handle.estimator, spool)
    cut = None
    if value.name != handle.served_name:
        cut = Splice(value.start, value.end, encoded_name(handle.served_name))
    body = Body(spool=spool, splice=cut, reservation=received.reservation,
                decoded=received.decoded)
    return Routed(handle, body, need)


def _json_object(data: bytes) -> dict[str, Any]:
    if not data:
        raise BadRequest("The request has no body; send JSON with `model`", code="missing_model")
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise invalid_json(exc) from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object", code="invalid_json")
    return payload


def _model_of(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("The request body has no `model` string", code="missing_model")
    if len(model) > MAX_MODEL_BYTES // 4 and len(model.encode("utf-8")) > MAX_MODEL_BYTES:
        raise _model_too_long()
    return model


def _model_too_long() -> BadRequest:
    return BadRequest(f"The request body's `model` is longer than {MAX_MODEL_BYTES} bytes",
                      code="missing_model")


async def _multipart(request: web.Request, registry: Registry, boundary: str,
                     budget: BodyBudget) -> Routed:
    reservation = await budget.reserve(SPOOL_RESERVE_BYTES)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    try:
        return await _read_form(request, registry, boundary, spool, reservation)
    except BaseException:
        spool.close()
        reservation.release()
        raise


async def _read_form(request: web.Request, registry: Registry, boundary: str,
                     spool: tempfile.SpooledTemporaryFile[bytes],
                     reservation: Reservation) -> Routed:
    scanner = ModelFieldScanner(boundary)
    read = chunks(request)
    async for chunk in read:
        spool.write(chunk)
        scanner.feed(chunk)
        if scanner.done:
            break
    if scanner.model is None:
        reason = scanner.error or "it has no `model` field"
        raise BadRequest(f"Cannot read the multipart form: {reason}", code="missing_model")
    handle = registry.get(scanner.model)
    need = None
    if handle.estimator is not None:
        # Read on until the audio file's header is in the spool (a few hundred KiB at most);
        # look only at the spool's start, never at a whole upload spooled to disk.
        async for chunk in read:
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
    decoded = decoded_by_aiohttp(request)
    body = Body(head=spool, rest=request, reservation=reservation, decoded=decoded)
    return Routed(handle, body, need)


def refuse_unfitting(handle: Servable, need: RequestNeed | None) -> None:
    """Refuse what not even the largest profile can hold."""
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
