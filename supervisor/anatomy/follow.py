"""Follow a service's log while it starts: a thread reads the runtime's blocking log
stream (Docker SDK) and hands each stamped line to the event loop.

The container may not exist yet when a start begins (`up` creates it), and Compose may
replace it (its config changed): the thread looks again until it is stopped, reading
only lines after the last one it handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from supervisor.anatomy.stamps import split_stamp

log = logging.getLogger(__name__)
LOOK_AGAIN = 0.25  # seconds between looks for a container that is not there yet


class LogSource(Protocol):
    def log_stream(self, service: str, since: float) -> Iterable[bytes] | None:
        """The service's log from `since` (epoch seconds) on, stamped and followed; None
        while it has no container. Blocking: called in a thread."""


def lines_of(chunks: Iterable[bytes]) -> Iterator[str]:
    """Whole lines out of a stream of chunks (a chunk may hold several or part of one)."""
    rest = b""
    for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line.decode(errors="replace").rstrip("\r")
    if rest:
        yield rest.decode(errors="replace")


class LogFollower:
    def __init__(self, source: LogSource, service: str, since: float,
                 on_line: Callable[[float, str], None]) -> None:
        self._source, self._service, self._since = source, service, since
        self._on_line = on_line
        self._loop = asyncio.get_running_loop()
        self._stopped = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"log-{service}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No more lines; the thread ends at its next line, or at once where the stream
        can be closed (Compose's containers)."""
        self._stopped.set()
        close = getattr(self._stream, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def _run(self) -> None:
        last: float | None = None  # the stamp of the last line handed on
        while not self._stopped.is_set():
            try:
                self._stream = self._source.log_stream(
                    self._service, self._since if last is None else last)
                for line in lines_of(self._stream or ()):
                    if self._stopped.is_set():
                        return
                    at, text = split_stamp(line)
                    if at is None or at < self._since or (last is not None and at <= last):
                        continue  # before the start, or handed on before a look again
                    last = at
                    self._hand_on(at, text)
            except Exception as exc:  # a stream closed by stop(), or Docker went away
                if not self._stopped.is_set():
                    log.debug("service=%s log stream ended: %r", self._service, exc)
            self._stopped.wait(LOOK_AGAIN)

    def _hand_on(self, at: float, text: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._on_line, at, text)
