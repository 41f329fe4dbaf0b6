"""An incremental, validating scan of a JSON object fed in chunks, for bodies too large to
parse whole.

A 100 MB chat request with base64 audio must not be held in memory, nor parsed into a
second 100 MB copy, to learn which model it is for. The proxy writes such a body to disk as
it arrives and feeds each chunk to a `JsonScanner`, which

- validates the whole document as strictly as orjson does (orjson checks the bodies small
  enough to be held in memory, so both paths accept the same bodies): RFC 8259 grammar,
  UTF-8 only, no lone surrogate escapes, no NaN/Infinity nor numbers that overflow a
  double, at most MAX_DEPTH levels of nesting, and a top-level object;
- reports to a `Listener` only the values at the paths a tree of `Role`s names (for the
  router the top-level `model` with its byte offsets, where an alias is spliced in; for the
  token estimate the texts and base64 audio of chat messages), and nothing else.

Memory does not grow with the body: the stack of open containers (MAX_DEPTH at most), a
carry of a few bytes between chunks (an escape or a number cut by a chunk's end), and keys
of reported objects up to MAX_KEY_BYTES. A string, however long, is never held here: its raw
bytes (escapes as written) go to the listener slice by slice.

Duplicate keys are not an error (JSON parsers take the last one): the listener is told
each time a reported key appears again, and decides what replacing its value means.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import orjson

__all__ = [
    "MAX_DEPTH",
    "JsonError",
    "JsonKind",
    "JsonScanner",
    "Listener",
    "NotAnObject",
    "Role",
    "safe_cut",
    "unescaped",
]

MAX_DEPTH = 1024  # orjson's limit: the paths for small and large bodies must agree
MAX_KEY_BYTES = 256  # a longer key is never one of the reported ones
MAX_TOKEN_BYTES = 64 << 10  # a number longer than this is refused rather than carried
PIECE_BYTES = 64 << 10  # of a string, validated (and reported) at once


class JsonError(ValueError):
    """The body is not valid JSON; the message says what and at which byte."""


class NotAnObject(JsonError):
    """The body's top-level value is not an object."""


class JsonKind(IntEnum):
    OBJECT = 1
    ARRAY = 2
    STRING = 3
    NUMBER = 4
    LITERAL = 5  # true, false, null


@dataclass(eq=False)
class Role:
    """What to report of a value at one place in the document, and where to look below it.

    A value whose kind the role does not take is validated but not reported.
    """

    name: str
    strings: bool = False  # report a string here (open, raw slices, close)
    scalars: bool = False  # report a number or literal here
    keys: dict[str, Role] = field(default_factory=dict)  # an object here: its reported keys
    items: Role | None = None  # an array here: the role of each element


class Listener(Protocol):
    """What a scan reports; offsets are absolute byte positions in the body."""

    def key(self, role: Role, name: str) -> None:
        """A key of `role.keys` appeared in an object of `role` (again, for a duplicate)."""

    def open(self, role: Role, kind: JsonKind, offset: int) -> None:
        """A reported object, array or string starts at `offset`."""

    def data(self, raw: bytes) -> None:
        """The next raw bytes (escapes as written) of the string being reported."""

    def close(self, role: Role, kind: JsonKind, end: int) -> None:
        """The reported object, array or string opened last ends just before `end`."""

    def scalar(self, role: Role, kind: JsonKind, offset: int, token: bytes) -> None:
        """A reported number or literal (`token` as written) at `offset`."""


_WS = re.compile(rb"[ \t\n\r]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_CHARS = re.compile(rb"[-+.eE0-9]*")
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_LITERALS = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}
_VALUE_START = frozenset(b'{["-0123456789tfn')

# Runs of simple elements inside an unreported container, matched in C rather than token by
# token (arrays of token ids, lists of small objects or chat messages: 50+ MB/s instead of
# 3). An element counts only with the comma after it, so a run never ends inside a token
# cut by a chunk's end; what a run does not take (exponents, nesting, an invalid byte) the
# token loop reads. Numbers here have no exponent and at most 300 digits (they cannot
# overflow); strings are checked as the token loop checks them: escapes, surrogate pairs,
# no control characters, UTF-8 byte sequences (RFC 3629: no overlongs, no surrogates).
_WSP = rb"[ \t\n\r]*"
_NUM = rb"-?(?:0|[1-9][0-9]{0,299})(?:\.[0-9]+)?"
_UTF8 = (rb"(?:[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
         rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
         rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})")
_ESCAPE = (rb'\\(?:["\\/bfnrt]|u(?![dD][89a-fA-F])[0-9a-fA-F]{4}'
           rb"|u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})")
_STR = rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7f]++|' + _ESCAPE + rb"|" + _UTF8 + rb')*+"'
_SCALAR = rb"(?:" + _NUM + rb"|true|false|null|" + _STR + rb")"
_MEMBER = _STR + _WSP + rb":" + _WSP + _SCALAR + _WSP
_FLAT = (rb"(?:" + _SCALAR
         + rb"|\[" + _WSP + rb"(?:" + _SCALAR + _WSP + rb"(?:," + _WSP + _SCALAR + _WSP
         + rb")*+)?\]"
         + rb"|\{" + _WSP + rb"(?:" + _MEMBER + rb"(?:," + _WSP + _MEMBER + rb")*+)?\})")
_ARRAY_RUN = re.compile(rb"(?>" + _WSP + _FLAT + _WSP + rb",)++")
_OBJECT_RUN = re.compile(rb"(?>" + _WSP + _STR + _WSP + rb":" + _WSP + _FLAT + _WSP + rb",)++")

# What the scanner expects next.
_START, _VALUE, _FIRST, _OPEN, _KEY, _COLON, _NEXT, _DONE, _STRING = range(9)

_QUOTE, _BACKSLASH, _COMMA, _COLON_CHAR = 34, 92, 44, 58
_LBRACE, _RBRACE, _LBRACKET, _RBRACKET = 123, 125, 91, 93


def safe_cut(buf: bytes | bytearray, lo: int, hi: int) -> int:
    """The largest `c` <= `hi` (and >= `lo`) where the raw string content `buf[lo:hi]` can be
    cut: not inside an escape, between the halves of a surrogate pair, or inside a UTF-8
    character. `buf[lo:c]` is then valid string content on its own (if `buf` is valid)."""
    c = hi
    i = c  # back over the continuation bytes of a character that may be incomplete
    while i > lo and c - i < 3 and 0x80 <= buf[i - 1] < 0xC0:
        i -= 1
    if i > lo and buf[i - 1] >= 0xC0:
        lead = buf[i - 1]
        if c - (i - 1) < (2 if lead < 0xE0 else 3 if lead < 0xF0 else 4):
            c = i - 1
    k = buf.rfind(b"\\", max(lo, c - 6), c)  # an escape started in the last 6 bytes?
    if k >= 0 and unescaped(buf, lo, k) and c - k < (
            6 if k + 1 < c and buf[k + 1] == 117 else 2):
        c = k
    # A complete high surrogate escape must not be parted from its low half.
    h = c - 6
    if (h >= lo and buf[h] == _BACKSLASH and buf[h + 1] == 117
            and buf[h + 2] in b"dD" and buf[h + 3] in b"89abAB" and unescaped(buf, lo, h)):
        c = h
    return c


def unescaped(buf: bytes | bytearray, lo: int, k: int) -> bool:
    """Whether the byte at `k` is not escaped: an even run of backslashes (from `lo`) comes
    before it. A quote so placed ends a string; a backslash so placed starts an escape."""
    r = k
    while r > lo and buf[r - 1] == _BACKSLASH:
        r -= 1
    return (k - r) % 2 == 0


class JsonScanner:
    """Feed a body in chunks of any size and split; `close()` at its end.

    Raises JsonError (NotAnObject for a top-level value that is not an object) as soon
    as the bytes seen prove the body invalid, or at `close()` when it ended early.
    """

    def __init__(self, root: Role, listener: Listener, *, max_depth: int = MAX_DEPTH) -> None:
        self._listener = listener
        self._max_depth = max_depth
        self._state = _START
        self._carry = b""
        self._base = 0  # absolute offset of the current buffer's first byte
        self._objects: list[bool] = []  # per open container: object (True) or array
        self._roles: list[Role | None] = []  # per open container: its role, None if unreported
        self._next_role: Role | None = root  # the role of the value expected next
        # The string being scanned: a key or a value; reported, captured (a key), or neither.
        self._str_is_key = False
        self._str_reported = False
        self._key: bytearray | None = None
        self.size = 0  # bytes fed so far

    # ---- feeding ----------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        buf = self._carry + chunk if self._carry else chunk
        stop = self._scan(buf, final=False)
        self._carry = buf[stop:]
        self._base += stop

    def close(self) -> None:
        """The body ended: anything left open, or nothing at all, is an error."""
        buf, self._carry = self._carry, b""
        stop = self._scan(buf, final=True)
        self._base += stop
        if self._state == _START:
            raise JsonError("the body holds no JSON value")
        if self._state != _DONE or stop < len(buf):
            raise JsonError(f"the body ends inside the object at byte {self._base}")

    # ---- the grammar ------------------------------------------------------------------

    def _fail(self, what: str, pos: int) -> JsonError:
        return JsonError(f"{what} at byte {self._base + pos}")

    def _scan(self, buf: bytes, final: bool) -> int:
        """Consume `buf`; return where the unconsumed rest (the next carry) starts."""
        pos, n = 0, len(buf)
        ws = _WS.match
        while True:
            if self._state == _STRING:
                pos = self._string(buf, pos, final)
                if self._state == _STRING:
                    return pos
                continue
            pos = ws(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return pos
            c = buf[pos]
            state = self._state
            if state == _NEXT:
                is_object = self._objects[-1]
                if c == _COMMA:
                    pos += 1
                    if is_object:
                        self._state = _KEY
                        if self._roles[-1] is None:
                            pos = self._run(_OBJECT_RUN, buf, pos)
                    else:
                        self._state = _VALUE
                        role = self._roles[-1]
                        if role is None:
                            pos = self._run(_ARRAY_RUN, buf, pos)
                        self._next_role = role.items if role is not None else None
                elif c == (_RBRACE if is_object else _RBRACKET):
                    pos = self._close_container(pos)
                else:
                    raise self._fail("expected ',' or '" + ("}" if is_object else "]") + "'", pos)
            elif state in (_OPEN, _KEY):
                if c == _QUOTE:
                    self._begin_key()
                    pos += 1
                elif c == _RBRACE and state == _OPEN:
                    pos = self._close_container(pos)
                else:
                    raise self._fail("expected a key in quotes", pos)
            elif state == _COLON:
                if c != _COLON_CHAR:
                    raise self._fail("expected ':'", pos)
                self._state = _VALUE
                pos += 1
            elif state in (_VALUE, _FIRST):
                if c == _RBRACKET and state == _FIRST:
                    pos = self._close_container(pos)
                else:
                    new = self._value(buf, pos, c, final)
                    if new < 0:
                        return pos  # a number or literal cut by the chunk's end
                    pos = new
            elif state == _START:
                if c != _LBRACE:
                    if c in _VALUE_START:
                        raise NotAnObject(f"the top-level value is not an object (byte "
                                          f"{self._base + pos})")
                    raise self._fail("expected a JSON object", pos)
                pos = self._value(buf, pos, c, final)
            else:  # _DONE
                raise self._fail("unexpected data after the object", pos)

    def _run(self, run: re.Pattern[bytes], buf: bytes, pos: int) -> int:
        """Skip the simple elements (each with its comma) that follow in an unreported
        container; the state (a key or a value expected) stays as it is."""
        match = run.match(buf, pos)
        return pos if match is None else match.end()

    def _value(self, buf: bytes, pos: int, c: int, final: bool) -> int:
        """Start (or, for a scalar, read) the value at `pos`; -1: wait for more bytes."""
        role = self._next_role
        if c == _QUOTE:
            self._str_is_key = False
            self._str_reported = role is not None and role.strings
            if self._str_reported:
                assert role is not None
                self._listener.open(role, JsonKind.STRING, self._base + pos)
            self._state = _STRING
            return pos + 1
        if c in (_LBRACE, _LBRACKET):
            return self._open_container(buf, pos, c == _LBRACE, role)
        n = len(buf)
        if c == 45 or 48 <= c <= 57:  # '-' or a digit
            end = _NUMBER_CHARS.match(buf, pos).end()  # type: ignore[union-attr]
            if end == n and not final:
                if end - pos > MAX_TOKEN_BYTES:
                    raise self._fail(f"a number longer than {MAX_TOKEN_BYTES} bytes", pos)
                return -1
            number = _NUMBER.match(buf, pos)
            if number is None or number.end() != end:
                raise self._fail("invalid number", pos)
            token = buf[pos:end]
            if (end - pos > 15 or b"e" in token or b"E" in token) and math.isinf(float(token)):
                raise self._fail("a number out of the range of a double", pos)
            kind = JsonKind.NUMBER
        elif c in _LITERALS:
            literal = _LITERALS[c]
            end = pos + len(literal)
            if not buf.startswith(literal, pos):
                if not final and end > n and literal.startswith(buf[pos:]):
                    return -1
                raise self._fail("expected a value", pos)
            token = literal
            kind = JsonKind.LITERAL
        else:
            raise self._fail("expected a value", pos)
        if role is not None and role.scalars:
            self._listener.scalar(role, kind, self._base + pos, token)
        self._after_value()
        return end

    def _open_container(self, buf: bytes, pos: int, is_object: bool, role: Role | None) -> int:
        if len(self._objects) >= self._max_depth:
            raise self._fail(f"nested deeper than {self._max_depth} levels", pos)
        reported = role if role is not None and (
            role.keys if is_object else role.items is not None) else None
        self._objects.append(is_object)
        self._roles.append(reported)
        pos += 1
        if reported is not None:
            self._listener.open(reported, JsonKind.OBJECT if is_object else JsonKind.ARRAY,
                                self._base + pos - 1)
        if is_object:
            self._state = _OPEN
            if reported is None:
                end = self._run(_OBJECT_RUN, buf, pos)
                if end > pos:
                    self._state, pos = _KEY, end
        else:
            self._state = _FIRST
            self._next_role = reported.items if reported is not None else None
            if reported is None:
                end = self._run(_ARRAY_RUN, buf, pos)
                if end > pos:
                    self._state, pos = _VALUE, end
        return pos

    def _after_value(self) -> None:
        self._state = _NEXT if self._objects else _DONE

    def _close_container(self, pos: int) -> int:
        is_object = self._objects.pop()
        role = self._roles.pop()
        if role is not None:
            self._listener.close(role, JsonKind.OBJECT if is_object else JsonKind.ARRAY,
                                 self._base + pos + 1)
        self._after_value()
        return pos + 1

    def _begin_key(self) -> None:
        self._str_is_key = True
        self._str_reported = False
        self._key = bytearray() if self._roles[-1] is not None else None
        self._state = _STRING

    def _end_key(self) -> None:
        self._state = _COLON
        role, raw = self._roles[-1], self._key
        self._next_role = None
        if role is None or raw is None or len(raw) > MAX_KEY_BYTES:
            return
        name = orjson.loads(b'"' + raw + b'"') if _BACKSLASH in raw else raw.decode()
        child = role.keys.get(name)
        if child is not None:
            self._listener.key(role, name)
            self._next_role = child

    # ---- strings ----------------------------------------------------------------------

    def _string(self, buf: bytes, pos: int, final: bool) -> int:
        """Scan string content from `pos`: to the closing quote if it is in `buf` (then the
        state changes and the position after it is returned), else to a safe cut, where
        the carry starts. The content is validated by orjson (escapes, surrogate pairs,
        control characters, UTF-8) in one pass in C."""
        n = len(buf)
        quote = pos
        while True:
            quote = buf.find(b'"', quote)
            if quote < 0 or unescaped(buf, pos, quote):
                break  # no quote, or one that ends the string (not an escaped one)
            quote += 1
        stop = quote if quote >= 0 else n if final else safe_cut(buf, pos, n)
        while pos < stop:  # in pieces: orjson's working memory is ~13x what it reads
            end = stop if stop - pos <= PIECE_BYTES else safe_cut(buf, pos, pos + PIECE_BYTES)
            piece = buf[pos:end]
            self._validate(piece, pos)
            if self._str_reported:
                self._listener.data(piece)
            elif self._str_is_key and self._key is not None and len(self._key) <= MAX_KEY_BYTES:
                self._key += piece[: MAX_KEY_BYTES + 1]
            pos = end
        if quote < 0:
            return stop
        if self._str_is_key:
            self._end_key()
        else:
            if self._str_reported:
                role = self._next_role
                assert role is not None
                self._listener.close(role, JsonKind.STRING, self._base + quote + 1)
            self._after_value()
        return quote + 1

    def _validate(self, piece: bytes, pos: int) -> None:
        try:
            orjson.loads(b'"' + piece + b'"')
        except orjson.JSONDecodeError as exc:
            at = max(0, min(exc.pos - 1, len(piece)))
            why = str(exc).split(":", 1)[0]
            raise self._fail(f"invalid string content ({why})", pos + at) from None
