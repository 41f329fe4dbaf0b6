"""What each client used, per model: requests, seconds, tokens read from the answers'
`usage`, at a cost the fast path does not notice: a non-streamed answer's last bytes are
searched once at its end; a stream's events are looked at only where one mentions usage.

A streamed request that did not ask for usage is sent with `stream_options.include_usage`
(the server then ends its stream with one usage-only event), and that event is taken out
of what the client gets, so the client sees the stream it asked for.
"""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass
from typing import Any

import orjson

_KEY = b'"usage"'
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_ASK = b'"stream_options":{"include_usage":true},'
EVENT_STREAM = b"text/event-stream"  # an SSE answer's content type (lowered, a prefix)
TAIL_BYTES = 1024  # of a non-streamed answer: where its `usage` is (the last member)
MAX_PENDING = 1 << 16  # an event longer than this goes on unread


@dataclass(slots=True)
class Usage:
    requests: int = 0
    seconds: float = 0.0  # from the request to the end of its answer
    held_seconds: float = 0.0  # of which held: waiting for the model to be ready
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, seconds: float, held: float, tokens: tuple[int, int] | None) -> None:
        self.requests += 1
        self.seconds += seconds
        self.held_seconds += held
        if tokens is not None:
            self.prompt_tokens += tokens[0]
            self.completion_tokens += tokens[1]

    def merge(self, other: Usage) -> None:
        """Add what `other` counted (a total, or a worker's share)."""
        self.requests += other.requests
        self.seconds += other.seconds
        self.held_seconds += other.held_seconds
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def row(self) -> list[float]:
        """Its fields in order, as a control message carries them (`from_row`)."""
        return list(astuple(self))

    @classmethod
    def from_row(cls, row: list[Any]) -> Usage:
        """ValueError or TypeError on a row that is not one."""
        requests, seconds, held, prompt, completion = row
        return cls(int(requests), float(seconds), float(held), int(prompt), int(completion))

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "held_seconds": round(self.held_seconds, 3),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


def read_usage(tail: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens of the last `usage` object in `tail`, found from its end
    with bytes.find and read by orjson (no regular expression: this runs once a request
    on the fast path)."""
    at = tail.rfind(_KEY)
    while at >= 0:
        found = _usage_at(tail, at + len(_KEY))
        if found is not None:
            return found
        at = tail.rfind(_KEY, 0, at)
    return None


def _usage_at(tail: bytes, i: int) -> tuple[int, int] | None:
    """The counts of the object that follows `"usage"` at `i` (`: {...}`); None where no
    object does (`null`, or the word inside a string)."""
    brace = tail.find(b"{", i)
    if brace < 0 or tail[i:brace].strip() != b":":
        return None
    end = tail.find(b"}", brace)
    if end < 0:
        return None
    try:
        counts = orjson.loads(tail[brace:end + 1])
    except orjson.JSONDecodeError:  # a nested object (`*_tokens_details`) ends it early
        fields = tail[brace + 1:end]
        return _count(fields, b'"prompt_tokens"'), _count(fields, b'"completion_tokens"')
    return _int(counts.get("prompt_tokens")), _int(counts.get("completion_tokens"))


def _int(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _count(fields: bytes, key: bytes) -> int:
    """A count read by hand from the members before a nested object."""
    i = fields.find(key)
    if i < 0:
        return 0
    rest = fields[i + len(key):].lstrip()
    if not rest.startswith(b":"):
        return 0
    rest = rest[1:].lstrip()
    digits = len(rest) - len(rest.lstrip(b"0123456789"))
    return int(rest[:digits]) if digits else 0


def ask_for_usage(payload: dict[str, Any], data: bytes) -> bytes | None:
    """The body of a streamed request that says nothing of usage, asking for it; None for
    any other (a client that set stream_options keeps its own)."""
    if payload.get("stream") is not True or "stream_options" in payload:
        return None
    start = data.find(b"{") + 1
    return data[:start] + _ASK + data[start:]


class StreamTap:
    """Reads the usage event of an SSE stream on its way to the client; `drop`: take that
    event out (the client did not ask for it)."""

    __slots__ = ("drop", "pending", "usage")

    def __init__(self, *, drop: bool) -> None:
        self.drop = drop
        self.pending = b""
        self.usage: tuple[int, int] | None = None

    def feed(self, data: bytes) -> bytes:
        """What of `data` goes to the client now."""
        if not self.drop:
            seen = self.pending + data
            if b'"usage"' in seen:
                self.usage = read_usage(seen) or self.usage
            self.pending = data[-256:]
            return data
        data = self.pending + data
        end = data.rfind(b"\n\n") + 2
        if end == 1:  # no event ended yet
            if len(data) > MAX_PENDING:
                self.pending = b""
                return data
            self.pending = data
            return b""
        whole, self.pending = data[:end], data[end:]
        if b'"usage"' not in whole:
            return whole
        kept = []
        for event in whole.split(b"\n\n")[:-1]:
            usage = read_usage(event) if _EMPTY_CHOICES.search(event) else None
            if usage is not None:
                self.usage = usage
            else:
                kept.append(event + b"\n\n")
        return b"".join(kept)

    def end(self) -> bytes:
        """What was held back when the stream ended (an unterminated last event)."""
        rest, self.pending = (b"" if not self.drop else self.pending), b""
        return rest


def tap_for(headers: list[tuple[bytes, bytes]], *, asked: bool, chunked: bool
            ) -> StreamTap | None:
    """A tap for an SSE answer (by its first content type; None for any other)."""
    for name, value in headers:
        if name.lower() == b"content-type":
            if value.lower().startswith(EVENT_STREAM):
                return stream_tap(asked=asked, chunked=chunked)
            return None
    return None


def stream_tap(*, asked: bool, chunked: bool) -> StreamTap:
    """The tap of an SSE answer: it drops the usage event only where usage was `asked` for
    the client and the framing allows (chunked, not a length)."""
    return StreamTap(drop=asked and chunked)


def keep_tail(tail: bytes, data: bytes) -> bytes:
    """The last bytes of an answer so far, where a non-streamed answer's `usage` is: kept
    in a field of the request, not an object of its own (the fast path's cost)."""
    return data if len(data) >= TAIL_BYTES else (tail + data)[-TAIL_BYTES:]


def tail_usage(tail: bytes) -> tuple[int, int] | None:
    return read_usage(tail) if b'"usage"' in tail else None
