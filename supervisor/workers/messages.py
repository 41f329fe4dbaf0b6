"""The control channel between the lifecycle owner and one worker: one JSON object a line
on a stream socket pair (ordered, so a worker's "busy" always arrives before the ack of a
later "close"; and a stream never drops or splits a message the way a full datagram
socket would).

Owner to worker: `table` (the models a worker may forward: ready, profile, upstream;
drain mode), `close` (stop forwarding a model until the next table; answer `ack`),
`abort` (cancel the exchanges of a model: a force stop or a dead server).
Worker to owner: `hello`, `busy` / `idle` (its count of requests for a model went
0 -> 1 / 1 -> 0), `ack`, `failed` (a connection to the server was refused), `stats`
(its cumulative request metrics, about once a second).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

LINE_LIMIT = 64 << 20  # a stats message with many label sets is still one line
Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Entry:
    """What a worker knows of a model: whether it may forward to it, and where."""

    name: str
    ready: bool
    profile: str
    upstream: str

    def encode(self) -> list[Any]:
        return [self.name, self.ready, self.profile, self.upstream]

    @classmethod
    def decode(cls, row: list[Any]) -> Entry:
        name, ready, profile, upstream = row
        return cls(str(name), bool(ready), str(profile), str(upstream))


def encode(message: Message) -> bytes:
    return orjson.dumps(message) + b"\n"


def decode(line: bytes) -> Message:
    message = orjson.loads(line)
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ValueError(f"not a control message: {line[:80]!r}")
    return message


def table(entries: list[Entry], *, draining: bool) -> Message:
    return {"t": "table", "models": [e.encode() for e in entries], "draining": draining}


def entries(message: Message) -> list[Entry]:
    return [Entry.decode(row) for row in message["models"]]


async def read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at the end of the stream (the other process is gone)."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    return decode(line) if line else None
