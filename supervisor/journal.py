"""The request journal (`journal: PATH`): one JSON line per request, what `model-supervisor
simulate --trace` replays (simulate/trace.py reads `time`, `model`, `duration` and `held`),
so that an operator can price other idle settings on their own traffic.

    {"time": 1733230000.123, "model": "m", "profile": "default", "duration": 4.2,
     "held": 3.1, "start": "cold", "status": 200}

`time`: wall-clock seconds when the request came; `duration`: seconds until it ended,
`held` included (the seconds it waited on a start or a wake); `start`: what it found,
`cold` (a start), `wake` (asleep) or `warm`. Recording costs the event loop one append;
a thread turns records into lines and writes them every second and at close, and rotates
the file by size (PATH.1 the newest of the `journal_keep` old ones).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

log = logging.getLogger("supervisor.journal")

StartKind = Literal["cold", "wake", "warm"]
FLUSH_EVERY = 1.0  # seconds


@dataclass(frozen=True, slots=True)
class Entry:
    time: float
    model: str
    profile: str
    duration: float
    held: float
    start: StartKind
    status: int

    def line(self) -> str:
        return json.dumps({"time": round(self.time, 3), "model": self.model,
                           "profile": self.profile, "duration": round(self.duration, 3),
                           "held": round(self.held, 3), "start": self.start,
                           "status": self.status}, separators=(", ", ": ")) + "\n"


class Recorder(Protocol):
    """What the fast path records a request in: the owner's Journal, or a worker's feed
    of the owner's (workers/journal_feed.py)."""

    def served(self, model: str, profile: str, began: float, ended: float, held: float,
               start: StartKind, status: int) -> None: ...


class Journal:
    def __init__(self, path: Path, max_bytes: int, keep: int,
                 every: float = FLUSH_EVERY) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self._queue: deque[Entry] = deque()  # appends and pops are atomic: no lock
        self._stop = threading.Event()
        self._every = every
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)

    def start(self) -> None:
        """Write every second from now on (until then, only `close` writes)."""
        self._thread.start()

    def record(self, entry: Entry) -> None:
        """On the event loop: the line is made and written in the journal's thread."""
        self._queue.append(entry)

    def served(self, model: str, profile: str, began: float, ended: float, held: float,
               start: StartKind, status: int) -> None:
        """A request that began and ended at these monotonic times (the proxy's clock)."""
        self._queue.append(Entry(time.time() - (ended - began), model, profile, ended - began,
                                 held, start, status))

    def close(self) -> None:
        """Write what is left and end the thread (blocks: call it from a thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._flush()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._flush()

    def _flush(self) -> None:
        lines: list[str] = []
        while self._queue:
            lines.append(self._queue.popleft().line())
        if not lines:
            return
        try:
            self._write(lines)
            self._failing = False
        except OSError as exc:  # a full disk loses lines, never a request
            if not self._failing:
                log.warning("journal %s: cannot write (%s); lines are dropped until it can",
                            self.path, exc)
            self._failing = True

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        chunk: list[str] = []
        for line in lines:
            n = len(line.encode())
            if size and size + n > self.max_bytes:
                self._append(chunk)
                chunk, size = [], 0
                self._rotate()
            chunk.append(line)
            size += n
        self._append(chunk)

    def _append(self, lines: list[str]) -> None:
        if lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(lines)

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.keep (the oldest dropped)."""
        if self.keep <= 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            newer = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if newer.exists():
                os.replace(newer, older)
