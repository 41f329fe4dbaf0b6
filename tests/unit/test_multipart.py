"""Unit tests for supervisor.proxy.multipart: bodies come from real encoders, fed in any split."""

from __future__ import annotations

import os
from collections.abc import Iterable

import httpx2
import pytest
from urllib3 import encode_multipart_formdata

from supervisor.proxy.multipart import (
    MAX_HEADER_BYTES,
    MAX_PREAMBLE_BYTES,
    ModelFieldScanner,
    boundary_of,
)

BOUNDARY = "b0undary-XYZ"


def scan(body: bytes, boundary: str, chunk_size: int | None = None, **kw: int) -> ModelFieldScanner:
    """Feed ``body`` in ``chunk_size`` pieces (whole body when None), stopping when done."""
    scanner = ModelFieldScanner(boundary, **kw)
    size = chunk_size or max(1, len(body))
    for start in range(0, len(body), size):
        scanner.feed(body[start : start + size])
        if scanner.done:
            break
    return scanner


def urllib3_body(fields: Iterable[tuple[str, object]]) -> tuple[bytes, str]:
    body, content_type = encode_multipart_formdata(list(fields), boundary=BOUNDARY)  # type: ignore[arg-type]
    boundary = boundary_of(content_type)
    assert boundary == BOUNDARY
    return body, boundary


def httpx_body(model: str, payload: bytes) -> tuple[bytes, str]:
    """Encode the way the OpenAI client does (it uses httpx's multipart encoder)."""
    request = httpx2.Request(
        "POST",
        "http://proxy/v1/audio/transcriptions",
        data={"model": model, "language": "en"},
        files={"file": ("speech.wav", payload, "audio/wav")},
    )
    boundary = boundary_of(request.headers["content-type"])
    assert boundary is not None
    return request.read(), boundary


# Looks like multipart structure but contains no delimiter for BOUNDARY.
TRICKY = b"RIFF\r\n--b0undary-XY\r\n\r\n--\r\n" + bytes(range(256)) * 4


# --- boundary_of -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=abc", "abc"),
        ("multipart/form-data;boundary=abc", "abc"),
        ('multipart/form-data; boundary="abc def"', "abc def"),
        ('multipart/form-data; boundary="a;b=c"; charset=utf-8', "a;b=c"),
        ('multipart/form-data; boundary="a\\"b"', 'a"b'),
        ("Multipart/Form-Data; BOUNDARY=MiXeD", "MiXeD"),
        ("multipart/form-data; charset=utf-8; boundary=abc", "abc"),
        ("  multipart/form-data ; boundary = abc ; x=y", "abc"),
        ('multipart/form-data; x="boundary=evil"; boundary=real', "real"),
        ("multipart/form-data", None),
        ("multipart/form-data;", None),
        ("multipart/form-data; boundary=", None),
        ('multipart/form-data; boundary=""', None),
        ("multipart/form-data; charset=utf-8", None),
        ("multipart/mixed; boundary=abc", None),
        ("multipart/form-datax; boundary=abc", None),
        ("application/json", None),
        ("", None),
    ],
)
def test_boundary_of(content_type: str, expected: str | None) -> None:
    assert boundary_of(content_type) == expected


def test_empty_boundary_rejected() -> None:
    with pytest.raises(ValueError):
        ModelFieldScanner("")


# --- finding the model -------------------------------------------------------------------


def test_model_before_file_part() -> None:
    body, boundary = urllib3_body(
        [("model", "whisper-large-v3"), ("file", ("a.wav", b"x" * 100_000, "audio/wav"))]
    )
    scanner = scan(body, boundary)
    assert scanner.done
    assert scanner.model == "whisper-large-v3"
    assert scanner.error is None


def test_stops_early_when_model_precedes_file() -> None:
    body, boundary = urllib3_body(
        [("model", "m"), ("file", ("a.wav", b"x" * 1_000_000, "audio/wav"))]
    )
    scanner = ModelFieldScanner(boundary)
    fed = 0
    while not scanner.done:
        scanner.feed(body[fed : fed + 4096])
        fed += 4096
    assert scanner.model == "m"
    assert fed == 4096


def test_model_after_large_file_part() -> None:
    payload = os.urandom(5 * 1024 * 1024)
    body, boundary = urllib3_body(
        [("file", ("a.wav", payload, "audio/wav")), ("model", "whisper-1")]
    )
    for chunk_size in (65536, 100_000, None):  # None: one 5 MB feed, scanned in slices
        scanner = scan(body, boundary, chunk_size)
        assert (scanner.done, scanner.model, scanner.error) == (True, "whisper-1", None)


def test_httpx_encoded_body() -> None:
    body, boundary = httpx_body("whisper-1", os.urandom(200_000))
    for chunk_size in (None, 1, 7, 4096):
        scanner = scan(body, boundary, chunk_size)
        assert (scanner.done, scanner.model, scanner.error) == (True, "whisper-1", None)


def test_every_chunk_size_small_body() -> None:
    body, boundary = urllib3_body(
        [
            ("language", "en"),
            ("file", ("a.wav", TRICKY, "audio/wav")),
            ("model", "  Systran/faster-whisper-small \r\n"),
            ("temperature", "0"),
        ]
    )
    for chunk_size in range(1, len(body) + 1):
        scanner = scan(body, boundary, chunk_size)
        assert scanner.model == "Systran/faster-whisper-small", chunk_size
        assert scanner.done and scanner.error is None


def test_every_split_point_httpx_body() -> None:
    body, boundary = httpx_body("tiny", TRICKY)
    for cut in range(len(body) + 1):
        scanner = ModelFieldScanner(boundary)
        scanner.feed(body[:cut])
        scanner.feed(body[cut:])
        assert (scanner.done, scanner.model, scanner.error) == (True, "tiny", None), cut


def test_utf8_model_value() -> None:
    body, boundary = urllib3_body([("model", "modèle-ünïcode")])
    assert scan(body, boundary, 1).model == "modèle-ünïcode"


def _raw(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    delim = b"--" + BOUNDARY.encode()
    out = preamble + (b"\r\n" if preamble else b"")
    for part in parts:
        out += delim + b"\r\n" + part + b"\r\n"
    return out + delim + b"--\r\n" + epilogue


@pytest.mark.parametrize(
    "headers",
    [
        b'Content-Disposition: form-data; name="model"',
        b"Content-Disposition: form-data; name=model",
        b'content-disposition:form-data;name="model"',
        b'CONTENT-DISPOSITION: Form-Data; NAME="model"',
        b"X-Other: 1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b'Content-Disposition: form-data; name="model"',
    ],
)
def test_header_variants(headers: bytes) -> None:
    body = _raw(b'Content-Disposition: form-data; name="x"\r\n\r\n1', headers + b"\r\n\r\nm1")
    for chunk_size in (None, 1, 3):
        assert scan(body, BOUNDARY, chunk_size).model == "m1"


@pytest.mark.parametrize(
    "headers",
    [
        b'Content-Disposition: form-data; name="models"',
        b'Content-Disposition: form-data; name="file"; filename="model"',
        b'Content-Disposition: form-data; filename="a; name=model"; name="f"',
        b"X-Name: model",
    ],
)
def test_not_model_field(headers: bytes) -> None:
    body = _raw(headers + b"\r\n\r\nnot-it")
    scanner = scan(body, BOUNDARY, 2)
    assert (scanner.done, scanner.model, scanner.error) == (True, None, None)


def test_preamble_transport_padding_and_headerless_part() -> None:
    body = _raw(
        b"\r\nheaderless part",
        b'Content-Disposition: form-data; name="model"\r\n\r\npre',
        preamble=b"This is a preamble.\r\n--not the boundary",
        epilogue=b"epilogue",
    ).replace(b"--" + BOUNDARY.encode() + b"\r\n", b"--" + BOUNDARY.encode() + b" \t\r\n", 1)
    for chunk_size in range(1, 40):
        scanner = scan(body, BOUNDARY, chunk_size)
        assert (scanner.model, scanner.error) == ("pre", None), chunk_size


def test_field_absent() -> None:
    body, boundary = urllib3_body(
        [("language", "en"), ("file", ("a.wav", b"data" * 1000, "audio/wav"))]
    )
    for chunk_size in (None, 1, 100):
        scanner = scan(body, boundary, chunk_size)
        assert (scanner.done, scanner.model, scanner.error) == (True, None, None)


def test_no_parts_at_all() -> None:
    scanner = scan(b"--" + BOUNDARY.encode() + b"--\r\n", BOUNDARY, 1)
    assert (scanner.done, scanner.model, scanner.error) == (True, None, None)


def test_input_after_done_is_ignored() -> None:
    body, boundary = urllib3_body([("model", "m")])
    scanner = scan(body, boundary)
    scanner.feed(b"more garbage")
    assert (scanner.model, scanner.buffered) == ("m", 0)


# --- malformed bodies --------------------------------------------------------------------


def _assert_error(scanner: ModelFieldScanner, fragment: str) -> None:
    assert scanner.done
    assert scanner.model is None
    assert scanner.error is not None and fragment in scanner.error, scanner.error


def test_garbage_without_boundary() -> None:
    for chunk_size in (None, 1000):
        scanner = scan(os.urandom(MAX_PREAMBLE_BYTES + 100), BOUNDARY, chunk_size)
        _assert_error(scanner, "no boundary")


def test_truncated_body_close() -> None:
    body, boundary = urllib3_body([("file", ("a.wav", b"x" * 1000, "audio/wav"))])
    scanner = scan(body[:500], boundary)
    assert not scanner.done
    scanner.close()
    _assert_error(scanner, "ended")


def test_close_after_done_keeps_result() -> None:
    body, boundary = urllib3_body([("model", "m")])
    scanner = scan(body, boundary)
    scanner.close()
    assert (scanner.model, scanner.error) == ("m", None)


def test_oversized_model_value() -> None:
    body, boundary = urllib3_body([("model", "m" * 5000)])
    for chunk_size in (None, 1, 64):
        _assert_error(scan(body, boundary, chunk_size, max_value_bytes=1024), "longer than 1024")


def test_model_value_at_limit() -> None:
    body, boundary = urllib3_body([("model", "m" * 1024)])
    for chunk_size in (None, 1, 64):
        assert scan(body, boundary, chunk_size, max_value_bytes=1024).model == "m" * 1024


def test_unterminated_oversized_value_fails_before_body_ends() -> None:
    scanner = ModelFieldScanner(BOUNDARY, max_value_bytes=100)
    scanner.feed(b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="model"')
    scanner.feed(b"\r\n\r\n")
    for _ in range(100):
        scanner.feed(b"v" * 10)
    _assert_error(scanner, "longer than 100")


def test_non_utf8_value() -> None:
    body = _raw(b'Content-Disposition: form-data; name="model"\r\n\r\n\xff\xfe')
    _assert_error(scan(body, BOUNDARY, 1), "UTF-8")


def test_empty_value() -> None:
    body = _raw(b'Content-Disposition: form-data; name="model"\r\n\r\n  ')
    _assert_error(scan(body, BOUNDARY), "empty")


def test_oversized_headers() -> None:
    body = _raw(b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\nbody")
    for chunk_size in (None, 1000):
        _assert_error(scan(body, BOUNDARY, chunk_size), "headers longer")


def test_garbage_after_delimiter() -> None:
    body = b"--" + BOUNDARY.encode() + b"junk\r\nContent-Disposition: form-data; name=model\r\n"
    _assert_error(scan(body + b"\r\nm\r\n", BOUNDARY, 1), "garbage")
    _assert_error(scan(b"--" + BOUNDARY.encode() + b"x" * 2000, BOUNDARY), "garbage")


@pytest.mark.parametrize("chunk_size", [None, 1, 13, 4096])
def test_random_bytes_never_raise(chunk_size: int | None) -> None:
    for seed in range(20):
        data = bytes((seed * 31 + i * 17) % 256 for i in range(3000))
        data = b"--" + BOUNDARY.encode() + b"\r\n" + data
        scanner = scan(data, BOUNDARY, chunk_size)
        scanner.close()
        assert scanner.done


# --- memory bound ------------------------------------------------------------------------


def test_buffer_stays_small_while_skipping_big_part() -> None:
    scanner = ModelFieldScanner(BOUNDARY)
    delimiter_len = len(b"\r\n--" + BOUNDARY.encode())
    scanner.feed(b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="file"')
    scanner.feed(b'; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n')
    chunk = os.urandom(65536)
    for _ in range(80):  # 5 MB of file content
        scanner.feed(chunk)
        assert scanner.buffered < delimiter_len
    assert not scanner.done
    scanner.feed(
        b"\r\n--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="model"'
    )
    scanner.feed(b"\r\n\r\nlate\r\n--" + BOUNDARY.encode() + b"--\r\n")
    assert (scanner.model, scanner.error) == ("late", None)


def test_buffer_small_when_whole_body_fed_at_once() -> None:
    body, boundary = urllib3_body(
        [("file", ("a.wav", b"\r\n-" * 1_000_000, "audio/wav")), ("language", "en")]
    )
    scanner = ModelFieldScanner(boundary)
    scanner.feed(body[:-10])
    assert not scanner.done
    assert scanner.buffered < 100
