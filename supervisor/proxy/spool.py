"""A request body on disk: written as it arrives, read back (as often as needed) to be
forwarded, with one byte range replaced on the way out.

Large JSON bodies live here instead of in memory (see body_budget.py). The file is anonymous
(unlinked at creation, in TMPDIR or `tempfile`'s default), so nothing is left behind even
if the process dies. Reads and writes go through a thread with explicit offsets: a page
that is not cached must not stall the event loop, and a read never depends on a file
position, so the same body can be streamed again for a retry. A lock makes `close()` wait
for a read or write under way (microseconds), so a descriptor is never closed under a
thread that then reads a file opened later with the same number.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import AsyncIterator

__all__ = ["BLOCK_BYTES", "Spool"]

BLOCK_BYTES = 256 << 10  # one read or write: few thread hops per 100 MB, little memory


class Spool:
    def __init__(self, directory: str | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115
        self._fd = self._file.fileno()
        self._lock = threading.Lock()
        self._closed = False
        self.size = 0

    async def append(self, data: bytes | bytearray) -> None:
        """Write `data` at the end (the caller leaves it unchanged until this returns)."""
        offset = self.size
        self.size += len(data)
        await asyncio.to_thread(self._write, data, offset)

    def _write(self, data: bytes | bytearray, offset: int) -> None:
        view = memoryview(data)
        with self._lock:
            self._check_open()
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written

    def read(self, offset: int, size: int) -> bytes:
        """Blocking: up to `size` bytes at `offset` (for a worker thread)."""
        with self._lock:
            self._check_open()
            return os.pread(self._fd, size, offset)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the spool is closed")

    async def stream(self, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes from `start` to `end`, a block at a time."""
        offset = start
        while offset < end:
            data = await asyncio.to_thread(self.read, offset, min(BLOCK_BYTES, end - offset))
            if not data:
                raise OSError(f"the spooled body ends at {offset}, before {end}")
            offset += len(data)
            yield data

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._file.close()
