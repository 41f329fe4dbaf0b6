"""The one definition of a valid request (proxy/request.py), the head the aiohttp
application is fed, the rate-limited warning, and the lazy deadline."""

from __future__ import annotations

import asyncio
import logging

import pytest

from supervisor.proxy.deadline import Deadline
from supervisor.proxy.request import Rejected, Request, Warnings, app_head, check, malformed


def _request(*headers: tuple[bytes, bytes], url: bytes = b"/v1/x") -> Request:
    request = Request()
    request.url = url
    request.headers = list(headers)
    return request


@pytest.mark.parametrize(("version", "headers", "status", "reason"), [
    ("1.1", [], 400, "malformed"),  # no Host
    ("1.1", [(b"Host", b"a"), (b"host", b"b")], 400, "malformed"),
    ("1.0", [(b"Host", b"a"), (b"host", b"b")], 400, "malformed"),
    ("1.0", [(b"Transfer-Encoding", b"chunked")], 400, "malformed"),
    ("2.0", [(b"Host", b"a")], 505, "unsupported_version"),
    ("0.9", [], 505, "unsupported_version"),
])
def test_what_neither_path_takes(version: str, headers: list[tuple[bytes, bytes]],
                                 status: int, reason: str) -> None:
    with pytest.raises(Rejected) as refused:
        check(_request(*headers), b"POST", version, False)
    assert (refused.value.status, refused.value.reason) == (status, reason)


def test_connect_is_refused() -> None:
    with pytest.raises(Rejected) as refused:
        check(_request((b"Host", b"a")), b"CONNECT", "1.1", True)
    assert refused.value.status == 405


def test_framing_is_noted() -> None:
    request = _request((b"Host", b"a"), (b"Content-Length", b"12"))
    check(request, b"POST", "1.1", False)
    assert (request.length, request.chunked, request.upgrade) == (12, False, None)
    chunked = _request((b"Host", b"a"), (b"Transfer-Encoding", b"chunked"))
    check(chunked, b"POST", "1.1", False)
    assert chunked.chunked and chunked.length is None
    assert check(_request(), b"GET", "1.0", False) is None  # HTTP/1.0 needs no Host


def test_an_ignored_upgrade_is_not_passed_on() -> None:
    """h2c is answered over HTTP/1.1: the application sees neither the Upgrade nor the
    `upgrade` token, and the other Connection tokens stay."""
    request = _request((b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"),
                       (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAA"))
    check(request, b"GET", "1.1", True)
    assert request.upgrade == b"h2c"
    head = app_head(request)
    assert head == (b"GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: HTTP2-Settings\r\n"
                    b"HTTP2-Settings: AAA\r\n\r\n")


def test_a_plain_request_is_fed_as_parsed() -> None:
    request = _request((b"Host", b"a"), (b"Content-Length", b"2"), url=b"/v1/models?x=1")
    check(request, b"HEAD", "1.0", False)
    assert app_head(request) == (b"HEAD /v1/models?x=1 HTTP/1.0\r\nHost: a\r\n"
                                 b"Content-Length: 2\r\n\r\n")


def test_warnings_are_one_line_at_most_every_ten_seconds(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    warn = Warnings()
    with caplog.at_level(logging.WARNING, logger="supervisor.proxy.edge"):
        for _ in range(50):
            warn(("127.0.0.1", 1), malformed("Invalid header value char"))
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.exc_info is None and "Invalid header value char" in record.getMessage()


async def test_a_deadline_moved_later_fires_once_at_its_end() -> None:
    fired: list[float] = []
    loop = asyncio.get_running_loop()
    rang = asyncio.Event()

    def fire() -> None:
        fired.append(loop.time())
        rang.set()

    deadline = Deadline(fire)
    began = loop.time()
    deadline.after(0.05)
    for _ in range(5):  # pushed away five times while its timer is armed
        await asyncio.sleep(0.02)
        deadline.after(0.05)
    end = deadline.at
    assert end is not None
    await asyncio.wait_for(rang.wait(), 5)
    assert fired[0] >= end and fired[0] - began >= 0.15
    deadline.after(0.01)
    deadline.clear()
    await asyncio.sleep(0.05)
    assert len(fired) == 1  # a cleared deadline does not fire
