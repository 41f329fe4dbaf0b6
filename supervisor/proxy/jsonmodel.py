"""The top-level `model` of a JSON body, where it lies, and the body with it replaced.

An alias must reach the model server as the name it serves. Re-serialising the body to
change one string costs a full parse and dump (most of the router's time on a 50 KB chat
history) and changes bytes the client chose (whitespace, escapes, number formats, integers
beyond 64 bits), so the value is replaced in place instead. Where it lies, like any JSON
parser sees it (the last of duplicate keys; never a `model` key of a nested object):

- `find_model`: the incremental scanner over the whole body (validating it too); for a
  spooled body it runs as the body arrives, with `ModelFinder` as its listener;
- `locate_model`: for a body already parsed by orjson, the same answer at C speed: each
  `"model":` in the bytes is a key, at some depth; the last one for which the bytes before
  it close into a valid object with a single `}` is the top-level one. A key spelled with
  escapes (`"m\\u006fdel"`) defeats the byte search, so a body with such escapes takes the
  scanner instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from supervisor.proxy.jsonscan import JsonKind, JsonScanner, Role, unescaped

__all__ = ["MAX_MODEL_BYTES", "ModelFinder", "ModelValue", "encoded_name", "find_model",
           "locate_model", "splice"]

MAX_MODEL_BYTES = 1024  # as for multipart forms; a longer value is refused, not held
_MAX_RAW = MAX_MODEL_BYTES * 6 + 12  # the longest raw form of such a value (\uXXXX escapes)

MODEL = Role("model", strings=True)
ROOT = Role("root", keys={"model": MODEL})


@dataclass(frozen=True, slots=True)
class ModelValue:
    """The last top-level `model` string: its value (None when longer than
    MAX_MODEL_BYTES) and its byte range, quotes included."""

    name: str | None
    start: int
    end: int


class ModelFinder:
    """A scan listener that keeps the last top-level `model` (see jsonscan.Listener):
    `value` is None when there is none or the last one is not a string."""

    def __init__(self) -> None:
        self.value: ModelValue | None = None
        self._raw: bytearray | None = None
        self._start = 0

    def key(self, role: Role, name: str) -> None:
        self.value = None  # a later duplicate replaces the earlier value, string or not

    def open(self, role: Role, kind: JsonKind, offset: int) -> None:
        if role is MODEL:
            self._raw = bytearray()
            self._start = offset

    def data(self, raw: bytes) -> None:
        if self._raw is not None and len(self._raw) <= _MAX_RAW:
            self._raw += raw[: _MAX_RAW + 1 - len(self._raw)]

    def close(self, role: Role, kind: JsonKind, end: int) -> None:
        if role is MODEL and self._raw is not None:
            raw, self._raw = bytes(self._raw), None
            self.value = ModelValue(_decode(raw), self._start, end)

    def scalar(self, role: Role, kind: JsonKind, offset: int, token: bytes) -> None:
        """Numbers and literals are not reported at this role."""


def _decode(raw: bytes) -> str | None:
    if len(raw) > _MAX_RAW:
        return None
    name: str = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
    return name if len(name.encode("utf-8", "surrogatepass")) <= MAX_MODEL_BYTES else None


def find_model(data: bytes) -> ModelValue | None:
    """The last top-level `model` string of a whole body (JsonError if it is invalid)."""
    finder = ModelFinder()
    scanner = JsonScanner(ROOT, finder)
    scanner.feed(data)
    scanner.close()
    return finder.value


_KEY = re.compile(rb'"model"[ \t\n\r]*:[ \t\n\r]*')
_ESCAPED_LETTER = re.compile(rb"\\u006[45cdfCDF]")  # m, o, d, e, l written as escapes
_MAX_CANDIDATES = 8  # then a nested `model` key is common here: scan instead


def locate_model(data: bytes, name: str) -> ModelValue | None:
    """Where the top-level `model` of a valid body is, its value being `name` (from the
    parsed body). Cheap: no Python loop over the body's tokens."""
    if _ESCAPED_LETTER.search(data) is None:
        candidates = list(_KEY.finditer(data))
        if len(candidates) <= _MAX_CANDIDATES:
            for key in reversed(candidates):
                if _top_level(data, key.start()):
                    value = _string_at(data, key.end())
                    if value is not None and value.name == name:
                        return value
                    break  # not what the parser saw: let the scanner decide
    return find_model(data)


def _top_level(data: bytes, at: int) -> bool:
    """Whether the key at `at` belongs to the top-level object: the bytes before it, less
    a trailing comma, close into a valid object with one `}`."""
    before = data[:at].rstrip(b" \t\n\r")
    if before.endswith(b","):
        before = before[:-1]
    elif not before.endswith(b"{"):
        return False
    try:
        orjson.loads(before + b"}")
    except orjson.JSONDecodeError:
        return False
    return True


def _string_at(data: bytes, at: int) -> ModelValue | None:
    """The string value that starts at `at`, if one does."""
    if data[at : at + 1] != b'"':
        return None
    end = at + 1
    while (end := data.find(b'"', end)) >= 0 and not unescaped(data, at + 1, end):
        end += 1
    if end < 0:
        return None
    return ModelValue(_decode(data[at + 1 : end]), at, end + 1)


def encoded_name(name: str) -> bytes:
    """`name` as a JSON string, quotes included."""
    return orjson.dumps(name)


def splice(data: bytes, value: ModelValue, name: str) -> bytes:
    """`data` with the `model` string at `value` replaced by `name`."""
    return b"".join((data[: value.start], encoded_name(name), data[value.end :]))
