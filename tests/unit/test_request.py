"""The one definition of a valid request (proxy/request.py), the head the aiohttp
application is fed, the rate-limited warning, and the sweeper of timeouts."""

from __future__ import annotations

import asyncio
import logging

import pytest

from supervisor.proxy.policy import handed_need
from supervisor.proxy.request import Rejected, Request, Warnings, app_head, check, malformed
from supervisor.proxy.timeouts import Sweeper


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


def test_the_fast_paths_need_goes_with_the_head_and_a_clients_own_never_does() -> None:
    """A request the fast path read back as too long reaches the application with the need
    it goes again with (routes.py reads it); one a client wrote itself is dropped."""
    request = _request((b"Host", b"a"), (b"X-Supervisor-Retry-Need", b"999999"))
    check(request, b"POST", "1.1", False)
    assert app_head(request) == b"POST /v1/x HTTP/1.1\r\nHost: a\r\n\r\n"
    assert app_head(request, 4097) == (b"POST /v1/x HTTP/1.1\r\nHost: a\r\n"
                                       b"x-supervisor-retry-need: 4097\r\n\r\n")
    assert handed_need("4097") == 4097 and handed_need(None) is None
    assert handed_need("-1") is None


def test_warnings_are_one_line_at_most_every_ten_seconds(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    warn = Warnings()
    with caplog.at_level(logging.WARNING, logger="supervisor.proxy.edge"):
        for _ in range(50):
            warn(("127.0.0.1", 1), malformed("Invalid header value char"))
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.exc_info is None and "Invalid header value char" in record.getMessage()


class _Quiet:
    """Something with a timeout, as a connection is."""

    def __init__(self, sweeper: Sweeper, limit: float) -> None:
        self.sweeper, self.limit, self.since = sweeper, limit, sweeper.now
        self.fired: list[float] = []
        self.rang = asyncio.Event()

    def expired(self) -> None:
        self.fired.append(asyncio.get_running_loop().time())
        self.rang.set()


async def test_a_timeout_moved_later_fires_once_near_its_end() -> None:
    sweeper = Sweeper(resolution=0.02)
    loop = asyncio.get_running_loop()
    quiet = _Quiet(sweeper, 0.1)
    sweeper.watch(quiet)
    quiet.since = sweeper.now
    began = loop.time()
    for _ in range(5):  # activity: pushed away five times
        await asyncio.sleep(0.04)
        quiet.since = sweeper.now
    last = loop.time()
    await asyncio.wait_for(quiet.rang.wait(), 5)
    assert quiet.fired[0] - began >= 0.2  # it did not fire while it was active
    assert 0.1 - 0.02 - 0.01 <= quiet.fired[0] - last <= 0.1 + 0.1  # within a resolution
    assert quiet.limit == 0.0  # fired once: it is not due again until it is set again
    await asyncio.sleep(0.1)
    assert len(quiet.fired) == 1
    sweeper.forget(quiet)
    await asyncio.sleep(0.05)
    assert sweeper._handle is None  # nothing watched: it stops sweeping


async def test_no_timeout_while_the_limit_is_zero() -> None:
    sweeper = Sweeper(resolution=0.01)
    quiet = _Quiet(sweeper, 0.0)
    sweeper.watch(quiet)
    await asyncio.sleep(0.1)
    assert quiet.fired == []
    sweeper.stop()
