"""The heads the fast path writes: what reaches the model server and the client."""

from __future__ import annotations

import httptools
import pytest

from supervisor.clients.usage import tap_for
from supervisor.proxy import fastwire
from supervisor.refusal import Refusal
from supervisor.rules.profiles import Profile

PROFILE = Profile("long", "svc", "http://127.0.0.1:1", "http://127.0.0.1:1/health", None, True)


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body


def test_the_request_head_keeps_end_to_end_fields_and_replaces_the_key() -> None:
    client = [(b"Host", b"proxy:8080"), (b"Content-Length", b"99"), (b"X-Custom", b"kept"),
              (b"Authorization", b"Bearer client"), (b"Connection", b"keep-alive, X-Hop"),
              (b"X-Hop", b"dropped"), (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers")]
    head = fastwire.request_head(b"/prefix/v1/chat/completions", client, b"10.0.0.2:8000", 2,
                                 fastwire.request_drops(frozenset({b"authorization"})),
                                 b"Authorization: Bearer server\r\n", b"keep-alive, X-Hop")
    parsed = _Parsed()
    parser = httptools.HttpRequestParser(parsed)
    parser.feed_data(head + b"{}")
    assert parsed.url == b"/prefix/v1/chat/completions" and parsed.body == b"{}"
    assert parsed.headers == [(b"host", b"10.0.0.2:8000"), (b"content-length", b"2"),
                              (b"x-custom", b"kept"), (b"authorization", b"Bearer server")]


def test_a_response_with_a_length_keeps_it_and_one_without_goes_chunked() -> None:
    with_length, chunked, event_stream = fastwire.response_head(
        200, b"OK", [(b"Content-Length", b"5"), (b"Connection", b"keep-alive")], PROFILE,
        close=False)
    assert not chunked and not event_stream
    assert with_length == (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                           b"X-Supervisor-Profile: long\r\n\r\n")
    stream, chunked, event_stream = fastwire.response_head(
        200, b"OK", [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"text/event-stream")],
        PROFILE, close=True)
    assert chunked and event_stream
    assert stream == (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"X-Supervisor-Profile: long\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n")


def test_no_body_statuses_get_no_framing() -> None:
    head, chunked, _ = fastwire.response_head(204, b"No Content", [], PROFILE, close=False)
    assert not chunked and b"Transfer-Encoding" not in head


def test_an_error_is_in_the_openai_shape() -> None:
    refusal = Refusal("gone", status=503, code="model_stopped", retry_after=5)
    raw = fastwire.error_response(refusal, close=True)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 5" in head and b"Connection: close" in head
    assert b"Content-Length: %d" % len(body) in head
    assert body == (b'{"error":{"message":"gone","type":"service_unavailable","param":null,'
                    b'"code":"model_stopped"}}')


@pytest.mark.parametrize(
    ("headers", "event_stream"),
    [([(b"Content-Type", b"Text/Event-Stream; charset=utf-8")], True),
     ([(b"content-type", b"application/json"), (b"content-type", b"text/event-stream")], False),
     ([(b"Content-Length", b"5")], False)],
)
def test_an_event_stream_is_told_by_its_first_content_type(
        headers: list[tuple[bytes, bytes]], event_stream: bool) -> None:
    assert fastwire.response_head(200, b"OK", headers, PROFILE, close=False)[2] is event_stream
    assert (tap_for(headers, asked=False, chunked=False) is not None) is event_stream
