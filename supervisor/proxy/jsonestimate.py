"""The token estimate of a JSON body on disk, without parsing it into memory.

`Estimator.for_json` needs the parsed body: for a 100 MB chat request with base64 audio
that is a second 100 MB copy, when all it reads is the text of the messages, the first few
hundred KB of each audio clip, and the clip's length. So for a spooled body the file is
scanned again (in a worker thread) and only those values are read, as they stream past:

- the texts (a message's `content` string or its parts' `text`, `prompt`, `input`) are
  counted in pieces of at most PIECE_BYTES, cut at a space where one is near (a tokenizer
  splits there anyway), so even a 100 MB text is never held whole;
- a base64 `input_audio.data` keeps its first HEAD_BYTES (decoded) and its length;
- `max_tokens` / `max_completion_tokens` are read as written.

Duplicate keys count as a parser reads them, the last one: each reported key's value is
tallied in its own slot of the object being read, a repeated key starts that slot anew,
and an object's slots are added up when it closes, so only the open containers are held.
The paths and the arithmetic are those of tokens/estimate.py; a test compares the two on the
same bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from dataclasses import dataclass, field

import orjson

from supervisor.proxy.jsonscan import JsonKind, JsonScanner, Role, safe_cut
from supervisor.proxy.spool import BLOCK_BYTES, Spool
from supervisor.tokens.audio import HEAD_BYTES, duration_seconds
from supervisor.tokens.estimate import Counter, Estimator, RequestNeed, heuristic_tokens

__all__ = ["PIECE_BYTES", "estimate_spooled"]

log = logging.getLogger(__name__)

PIECE_BYTES = 1 << 20  # of a text, counted at once
_HEAD_CHARS = (HEAD_BYTES // 3) * 4  # base64 characters that decode to HEAD_BYTES
_SPACE_WINDOW = 64 << 10  # how far back from a piece's end a space is looked for

TEXT = Role("text", strings=True)
AUDIO_DATA = Role("audio", strings=True)
INPUT_AUDIO = Role("input_audio", keys={"data": AUDIO_DATA})
PART = Role("part", strings=True, keys={"text": TEXT, "input_audio": INPUT_AUDIO})
CONTENT = Role("content", strings=True, items=PART)
MESSAGE = Role("message", keys={"content": CONTENT})
MESSAGES = Role("messages", items=MESSAGE)
LIMIT = Role("limit", scalars=True)
ROOT = Role("root", keys={
    "messages": MESSAGES, "prompt": CONTENT, "input": CONTENT,
    "max_tokens": LIMIT, "max_completion_tokens": LIMIT,
})


@dataclass(slots=True)
class Tally:
    """What one value adds to the need."""

    tokens: int = 0
    audio_seconds: float = 0.0
    audio_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.tokens += other.tokens
        self.audio_seconds += other.audio_seconds
        self.audio_tokens += other.audio_tokens
        self.notes.extend(n for n in other.notes if n not in self.notes)


@dataclass(slots=True)
class _Frame:
    """An open reported container: an object's slots by key, or an array's running sum."""

    is_object: bool
    slots: dict[str, Tally] = field(default_factory=dict)
    total: Tally = field(default_factory=Tally)
    key: str = ""

    def tally(self) -> Tally:
        if not self.is_object:
            return self.total
        whole = Tally()
        for slot in self.slots.values():
            whole.add(slot)
        return whole


class _Text:
    """A text counted piece by piece as its raw bytes arrive."""

    def __init__(self, count: Counter) -> None:
        self._count = count
        self._raw = bytearray()
        self.tokens = 0

    def feed(self, raw: bytes) -> None:
        self._raw += raw
        while len(self._raw) > PIECE_BYTES:
            space = self._raw.rfind(b" ", PIECE_BYTES - _SPACE_WINDOW, PIECE_BYTES)
            cut = space + 1 if space >= 0 else safe_cut(self._raw, 0, PIECE_BYTES)
            self._take(cut)

    def finish(self) -> int:
        self._take(len(self._raw))
        return self.tokens

    def _take(self, cut: int) -> None:
        text = _decode(bytes(self._raw[:cut]))
        del self._raw[:cut]
        self.tokens += self._count(text)


class _Audio:
    """A base64 clip: its first characters and its length."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._raw_size = 0
        self._saved = 0  # bytes by which escapes are longer than what they stand for
        self._tail = b""

    def feed(self, raw: bytes) -> None:
        self._raw_size += len(raw)
        if len(self._head) < _HEAD_CHARS + 12:
            self._head += raw[: _HEAD_CHARS + 12 - len(self._head)]
        if b"\\" in raw:  # e.g. PHP writes `/` as `\/`; the scanner never splits an escape
            self._saved += _escape_savings(raw)
        self._tail = raw[-2:] if len(raw) >= 2 else (self._tail + raw)[-2:]

    def finish(self, estimator: Estimator) -> Tally:
        chars = self._raw_size - self._saved
        size = chars * 3 // 4 - self._tail.count(b"=")
        cut = safe_cut(self._head, 0, len(self._head))
        text = _decode(bytes(self._head[:cut]))
        try:
            head = base64.b64decode(text[:_HEAD_CHARS], validate=False)
        except (binascii.Error, ValueError):
            log.warning("input_audio data is not valid base64; counting it as unknown")
            head = b""
        tally = Tally()
        seconds = duration_seconds(head, size)
        if seconds is None:
            tally.notes.append("an audio clip of unknown duration was not counted")
        else:
            tally.audio_seconds = seconds
            tally.audio_tokens = math.ceil(seconds * estimator.tokens_per_audio_second)
        return tally


def _decode(raw: bytes) -> str:
    """Valid raw string content as text. Not with orjson: its working memory is ~13x the
    input, and a piece here is up to 1 MiB."""
    if b"\\" not in raw:
        return raw.decode()
    text: str = json.loads(b'"' + raw + b'"')
    return text


def _escape_savings(raw: bytes) -> int:
    saved, at = 0, raw.find(b"\\")
    while at >= 0:
        long = raw[at + 1 : at + 2] == b"u"
        saved += 5 if long else 1
        at = raw.find(b"\\", at + (6 if long else 2))
    return saved


class _Tallier:
    """The scan listener (see jsonscan.Listener) that adds the need up."""

    def __init__(self, estimator: Estimator) -> None:
        self._estimator = estimator
        self._count = estimator.count or heuristic_tokens
        self._frames: list[_Frame] = []
        self._text: _Text | None = None
        self._audio: _Audio | None = None
        self.limits: dict[str, object] = {}
        self.total = Tally()

    def key(self, role: Role, name: str) -> None:
        frame = self._frames[-1]
        frame.key = name
        frame.slots[name] = Tally()  # a repeated key replaces what its value added
        if role is ROOT and ROOT.keys[name] is LIMIT:
            self.limits.pop(name, None)

    def open(self, role: Role, kind: JsonKind, offset: int) -> None:
        if kind is JsonKind.STRING:
            if role is AUDIO_DATA:
                self._audio = _Audio()
            else:
                self._text = _Text(self._count)
        else:
            self._frames.append(_Frame(kind is JsonKind.OBJECT))

    def data(self, raw: bytes) -> None:
        if self._audio is not None:
            self._audio.feed(raw)
        elif self._text is not None:
            self._text.feed(raw)

    def close(self, role: Role, kind: JsonKind, end: int) -> None:
        if kind is JsonKind.STRING:
            if self._audio is not None:
                tally = self._audio.finish(self._estimator)
                self._audio = None
            else:
                assert self._text is not None
                tally = Tally(tokens=self._text.finish())
                self._text = None
        else:
            tally = self._frames.pop().tally()
        self._deliver(tally)

    def scalar(self, role: Role, kind: JsonKind, offset: int, token: bytes) -> None:
        if role is LIMIT and len(self._frames) == 1:
            self.limits[self._frames[0].key] = orjson.loads(token)

    def _deliver(self, tally: Tally) -> None:
        if not self._frames:
            self.total = tally
            return
        frame = self._frames[-1]
        if frame.is_object:
            frame.slots[frame.key] = tally
        else:
            frame.total.add(tally)


def estimate_spooled(estimator: Estimator, spool: Spool) -> RequestNeed:
    """The need of the (valid) JSON body in `spool`; blocking: run it in a worker thread."""
    tallier = _Tallier(estimator)
    scanner = JsonScanner(ROOT, tallier)
    offset = 0
    while offset < spool.size:
        block = spool.read(offset, min(BLOCK_BYTES, spool.size - offset))
        if not block:
            raise OSError(f"the spooled body ends at {offset}, before {spool.size}")
        scanner.feed(block)
        offset += len(block)
    scanner.close()
    need = estimator.for_json(tallier.limits)  # output and reserved tokens, as for any body
    tally = tallier.total
    need.prompt_tokens = tally.tokens
    need.audio_seconds = tally.audio_seconds
    need.audio_tokens = tally.audio_tokens
    need.notes.extend(tally.notes)
    return need
