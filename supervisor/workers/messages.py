"""The control channel between the lifecycle owner and one worker: one JSON object a line
on a stream socket pair (ordered, so a worker's "busy" always arrives before the ack of a
later "close"; and a stream never drops or splits a message the way a full datagram
socket would).

Owner to worker: `table` (the models a worker may forward: ready, profile, upstream;
drain mode), `close` (stop forwarding a model until the next table; answer `ack`),
`abort` (cancel the exchanges of a model: a force stop or a dead server).
Worker to owner: `hello`, `busy` / `idle` (its count of requests for a model went
0 -> 1 / 1 -> 0), `ack`, `failed` (a connection to the server was refused), `stats`
(its cumulative request metrics, about once a second), `journal` (with `journal:`, the
requests it forwarded itself since the last one, a row each: journal.Entry's fields in
order; the owner writes them to its journal), `usage` (what each client used on its fast
path since the last one, a row per client and model: name, model, then clients.usage.Usage's
fields in order; the owner adds them to its clients' usage).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, get_args

import orjson

from supervisor.journal import Entry as JournalEntry
from supervisor.journal import StartKind

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


JournalRow = tuple[float, str, str, float, float, StartKind, int]
_STARTS = get_args(StartKind)


def journal(rows: list[JournalRow]) -> Message:
    return {"t": "journal", "rows": rows}


def journal_entries(message: Message) -> list[JournalEntry]:
    """The rows as journal entries (ValueError on a row that is not one)."""
    out = []
    for row in message["rows"]:
        time, model, profile, duration, held, start, status = row
        if start not in _STARTS:
            raise ValueError(f"not a start kind: {start!r}")
        out.append(JournalEntry(float(time), str(model), str(profile), float(duration),
                                float(held), start, int(status)))
    return out


async def read(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at the end of the stream (the other process is gone)."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.IncompleteReadError):
        return None
    return decode(line) if line else None
