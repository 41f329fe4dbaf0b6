"""Incremental detection of the ``model`` field in a ``multipart/form-data`` body.

Uploads such as ``POST /v1/audio/transcriptions`` can be 150 MB, and the proxy has to know
which model they are for before it can pick (and maybe start) a backend. Buffering the whole
body would cost memory and latency, so the proxy feeds raw body chunks to
:class:`ModelFieldScanner` as they arrive, stops reading once :attr:`ModelFieldScanner.done`
is true, and then forwards the bytes already read followed by the rest of the stream.

The module is pure (no I/O) so it can be tested with bodies from real encoders and any
chunking.
"""

from __future__ import annotations

import re
from enum import Enum, auto

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_PREAMBLE_BYTES",
    "ModelFieldScanner",
    "boundary_of",
    "file_part_head",
]

MAX_HEADER_BYTES = 16 * 1024
"""Largest part-header block accepted; real clients send a few hundred bytes."""

MAX_PREAMBLE_BYTES = 16 * 1024
"""Largest preamble tolerated before the first boundary; clients normally send none."""

_MAX_PADDING_BYTES = 1024
"""Largest run of transport padding (LWSP) tolerated after a boundary delimiter."""

_SLICE_BYTES = 1 << 16
"""Huge chunks are scanned in slices of this size: joining the carry onto a 150 MB chunk
would copy it into fresh memory (~0.4 s of page faults), slices reuse small allocations."""

# A parameter after a ';': name, then a quoted-string (with backslash escapes) or a token.
_PARAM_RE = re.compile(r';\s*([^\s;=]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPE_RE = re.compile(r"\\(.)")


def _params(header_value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=b; c="d"`` into a lower-cased type and its parameters.

    Parameter names are lower-cased; the first occurrence of a name wins; quoted values
    are unquoted so that ``boundary="a;b"`` yields ``a;b``.
    """
    head, sep, _ = header_value.partition(";")
    params: dict[str, str] = {}
    if sep:
        for match in _PARAM_RE.finditer(header_value, len(head)):
            name, raw = match.group(1).lower(), match.group(2).strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = _ESCAPE_RE.sub(r"\1", raw[1:-1])
            params.setdefault(name, raw)
    return head.strip().lower(), params


def boundary_of(content_type: str) -> str | None:
    """Return the boundary of a ``multipart/form-data`` Content-Type, else None.

    None means "not a form upload we can scan" (other media type, missing or empty
    boundary), so the caller falls back to its non-multipart handling.
    """
    media_type, params = _params(content_type)
    if media_type != "multipart/form-data":
        return None
    return params.get("boundary") or None


class _State(Enum):
    PREAMBLE = auto()  # before the first delimiter
    AFTER_DELIMITER = auto()  # deciding between "--" (close) and padding + CRLF
    HEADERS = auto()  # reading a part's header block
    SKIP = auto()  # skipping a part that is not the model field
    VALUE = auto()  # collecting the model field's value
    DONE = auto()


class ModelFieldScanner:
    """Find the ``model`` form field in a multipart body fed in arbitrary chunks.

    The body is treated as if it started with CRLF, so a body beginning with
    ``--boundary`` and one with a preamble followed by ``CRLF--boundary`` (RFC 2046)
    are handled by the same delimiter search. While skipping non-model parts only the
    last ``len(delimiter) - 1`` bytes are kept, so memory stays bounded for any body size;
    searches use :meth:`bytes.find` so a 150 MB file part is skipped at memory speed.

    After :attr:`done` becomes true further input is ignored. :attr:`model` is the value
    when found; :attr:`error` explains a malformed body; both None means the closing
    boundary came without a ``model`` field.
    """

    def __init__(self, boundary: str, *, max_value_bytes: int = 1024) -> None:
        if not boundary:
            raise ValueError("multipart boundary must not be empty")
        self._delimiter = b"\r\n--" + boundary.encode("utf-8", "surrogateescape")
        self._carry = len(self._delimiter) - 1
        self._max_value_bytes = max_value_bytes
        self._state = _State.PREAMBLE
        # Unconsumed input; starts with the virtual CRLF that precedes the first boundary.
        self._buf = b"\r\n"
        # Offset in _buf where the next search may start (bytes before it were searched).
        self._search_from = 0
        self.model: str | None = None
        self.error: str | None = None

    @property
    def done(self) -> bool:
        """True once the model is known, the body closed without it, or it is malformed."""
        return self._state is _State.DONE

    @property
    def buffered(self) -> int:
        """Bytes currently held by the scanner; bounded whatever the body size."""
        return len(self._buf)

    def close(self) -> None:
        """Mark the end of the body; a body that ends before its closing boundary is an error."""
        if not self.done:
            self._fail("body ended before the closing boundary")

    def feed(self, chunk: bytes) -> None:
        """Consume the next raw body bytes; split points may fall anywhere."""
        if len(chunk) <= _SLICE_BYTES:
            self._feed(chunk)
            return
        view = memoryview(chunk)
        for start in range(0, len(chunk), _SLICE_BYTES):
            if self.done:
                return
            self._feed(bytes(view[start : start + _SLICE_BYTES]))

    def _feed(self, chunk: bytes) -> None:
        if self.done or not chunk:
            return
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        while True:
            new_pos = self._step(buf, pos)
            if new_pos is None:
                break
            pos = new_pos
        if self.done:
            self._buf = b""
            return
        # Keep only what the current state still needs; searches resume where they stopped.
        keep = pos
        if self._state is _State.SKIP:
            keep = max(pos, len(buf) - self._carry)
        self._buf = buf[keep:]
        self._search_from = max(0, self._search_from - keep)

    def _fail(self, reason: str) -> None:
        self.error = reason
        self._state = _State.DONE

    def _enter(self, state: _State, pos: int) -> int:
        self._state = state
        self._search_from = pos
        return pos

    def _step(self, buf: bytes, pos: int) -> int | None:
        """Advance one state transition; return the new position or None for "need more"."""
        state = self._state
        if state is _State.PREAMBLE or state is _State.SKIP:
            found = buf.find(self._delimiter, max(pos, self._search_from))
            if found < 0:
                if state is _State.PREAMBLE and len(buf) - pos > MAX_PREAMBLE_BYTES:
                    self._fail(f"no boundary within the first {MAX_PREAMBLE_BYTES} bytes")
                    return None
                self._search_from = max(pos, len(buf) - self._carry)
                return None
            return self._enter(_State.AFTER_DELIMITER, found + len(self._delimiter))
        if state is _State.AFTER_DELIMITER:
            return self._after_delimiter(buf, pos)
        if state is _State.HEADERS:
            return self._headers(buf, pos)
        if state is _State.VALUE:
            return self._value(buf, pos)
        return None

    def _after_delimiter(self, buf: bytes, pos: int) -> int | None:
        if len(buf) - pos < 2:
            return None
        if buf.startswith(b"--", pos):
            self._state = _State.DONE  # closing delimiter: no model field in the body
            return None
        eol = buf.find(b"\r\n", max(pos, self._search_from))
        if eol < 0:
            if len(buf) - pos > _MAX_PADDING_BYTES:
                self._fail("garbage after boundary delimiter")
                return None
            self._search_from = max(pos, len(buf) - 1)
            return None
        if buf[pos:eol].strip(b" \t"):
            self._fail("garbage after boundary delimiter")
            return None
        return self._enter(_State.HEADERS, eol + 2)

    def _headers(self, buf: bytes, pos: int) -> int | None:
        if len(buf) - pos < 2:
            return None
        if buf.startswith(b"\r\n", pos):  # part without headers: not a named field
            return self._enter(_State.SKIP, pos + 2)
        end = buf.find(b"\r\n\r\n", max(pos, self._search_from))
        if end < 0 or end - pos > MAX_HEADER_BYTES:
            if len(buf) - pos > MAX_HEADER_BYTES:
                self._fail(f"part headers longer than {MAX_HEADER_BYTES} bytes")
                return None
            self._search_from = max(pos, len(buf) - 3)
            return None
        is_model = _is_model_part(buf[pos:end])
        return self._enter(_State.VALUE if is_model else _State.SKIP, end + 4)

    def _value(self, buf: bytes, pos: int) -> int | None:
        found = buf.find(self._delimiter, max(pos, self._search_from))
        if found < 0:
            if len(buf) - pos - self._carry > self._max_value_bytes:
                self._fail(f"model value longer than {self._max_value_bytes} bytes")
                return None
            self._search_from = max(pos, len(buf) - self._carry)
            return None
        if found - pos > self._max_value_bytes:
            self._fail(f"model value longer than {self._max_value_bytes} bytes")
            return None
        try:
            value = buf[pos:found].decode("utf-8").strip()
        except UnicodeDecodeError:
            self._fail("model value is not valid UTF-8")
            return None
        if not value:
            self._fail("model value is empty")
            return None
        self.model = value
        self._state = _State.DONE
        return None


def _is_model_part(block: bytes) -> bool:
    """True when a part's header block has ``Content-Disposition: form-data; name="model"``."""
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or name.strip().lower() != "content-disposition":
            continue
        disposition, params = _params(value)
        return disposition == "form-data" and params.get("name") == "model"
    return False


def file_part_head(prefix: bytes, boundary: str, limit: int) -> tuple[int, bytes] | None:
    """Where the first uploaded file's data starts in `prefix`, and its first bytes.

    Used after the model is known, to read an audio file's header for routing;
    None when `prefix` holds no complete file-part header.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    pos = 0
    while (start := prefix.find(delimiter, pos)) >= 0:
        headers_start = start + len(delimiter)
        if prefix[headers_start : headers_start + 2] == b"--":
            return None  # the closing delimiter
        headers_end = prefix.find(b"\r\n\r\n", headers_start)
        if headers_end < 0:
            return None
        data_start = headers_end + 4
        if b"filename=" in prefix[headers_start:headers_end].lower():
            end = prefix.find(b"\r\n" + delimiter, data_start)
            stop = end if end >= 0 else data_start + limit
            return data_start, prefix[data_start : min(stop, data_start + limit)]
        pos = data_start
    return None
