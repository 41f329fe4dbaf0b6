"""From an incoming request to the model it is for, and the body to forward.

JSON bodies are read whole (they must be parsed anyway). Multipart uploads
(audio files of 150 MB) are read only until their `model` field is seen; the
bytes read so far wait in a spool that moves to disk past 1 MiB, and the rest
of the upload is streamed to the upstream straight from the client's socket.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO

from aiohttp import web

from supervisor.handle import ModelHandle
from supervisor.multipart import ModelFieldScanner, boundary_of

SPOOL_MEMORY_BYTES = 1 << 20
READ_CHUNK = 1 << 16


class RouteError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


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


class Registry:
    """Model handles by name and alias."""

    def __init__(self, handles: Iterable[ModelHandle]) -> None:
        self.handles = {h.name: h for h in handles}
        self._by_alias = {
            alias: h for h in self.handles.values() for alias in [h.name, *h.config.aliases]
        }

    def get(self, name: str) -> ModelHandle:
        handle = self._by_alias.get(name)
        if handle is None:
            known = ", ".join(sorted(self.handles)) or "(none)"
            raise RouteError(
                404,
                "model_not_found",
                f"The model {name!r} does not exist. Known models: {known}",
            )
        return handle


async def resolve(request: web.Request, registry: Registry) -> tuple[ModelHandle, Body]:
    """Find the model a request is for; raise RouteError for a body that names none."""
    boundary = boundary_of(request.headers.get("Content-Type", ""))
    if boundary is not None:
        model, body = await _scan_multipart(request, boundary)
    else:
        data = await request.read()
        model = _model_of_json(data)
        body = Body(data=data)
    try:
        return registry.get(model), body
    except RouteError:
        body.close()
        raise


def _model_of_json(data: bytes) -> str:
    if not data:
        raise RouteError(400, "missing_model", "The request has no body; send JSON with `model`")
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RouteError(400, "invalid_json", f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RouteError(400, "invalid_json", "The request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise RouteError(400, "missing_model", "The request body has no `model` string")
    return model


async def _scan_multipart(request: web.Request, boundary: str) -> tuple[str, Body]:
    scanner = ModelFieldScanner(boundary)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        spool.write(chunk)
        scanner.feed(chunk)
        if scanner.done:
            break
    if scanner.model is None:
        spool.close()
        reason = scanner.error or "it has no `model` field"
        raise RouteError(400, "missing_model", f"Cannot read the multipart form: {reason}")
    return scanner.model, Body(spool=spool, rest=request)
