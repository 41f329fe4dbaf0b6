"""Runtime toggles that must outlive a restart (pins, idle timeouts, schedules added
through the admin API), in a small JSON file next to the config.

Written atomically: a temporary file in the same directory, fsync, then
os.replace, so a crash mid-write leaves the old file, never half a new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
_LOCKS: dict[Path, threading.Lock] = {}  # one per file, whoever holds a StateFile on it
_LOCKS_LOCK = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(path.resolve(), threading.Lock())


class StateFile:
    """`path` None keeps nothing (a supervisor built without a config file)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The saved state; empty when there is none or it cannot be read (logged)."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring the state file %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.warning("ignoring the state file %s: not a version %d state", self.path, VERSION)
            return {}
        return data

    async def save(self, data: dict[str, Any]) -> None:
        """Write the top-level sections in `data`; sections of other owners already in the
        file (the toggles of ops/control.py, the GPU `measured` peaks) are kept."""
        if self.path is None:
            return
        await asyncio.to_thread(self._merge_and_write, self.path, data)

    async def save_section(self, name: str, value: Any) -> None:
        """Replace one top-level section, keeping the rest of the file."""
        await self.save({name: value})

    def _merge_and_write(self, path: Path, data: dict[str, Any]) -> None:
        # Read, merge and write as one step per file: two savers of different sections
        # (toggles and GPU measurements) must not each write back what the other replaced.
        with _lock_for(path):
            kept = {k: v for k, v in self.load().items() if k not in data and k != "version"}
            text = json.dumps({**kept, **data, "version": VERSION}, indent=2, sort_keys=True)
            write_atomically(path, text + "\n")


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SectionSaver:
    """One section of the state file written every `every` seconds (until cancelled) and
    on demand. A failed write is logged, never raised: the loop goes on and the next write
    makes up for it, and a shutdown must not stop on it."""

    def __init__(self, state: StateFile, section: str, produce: Callable[[], Any],
                 what: str, every: float = 60.0) -> None:
        self.state, self.section, self.produce = state, section, produce
        self.what, self.every = what, every

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            await self.save()

    async def save(self) -> bool:
        """Whether it was written."""
        try:
            await self.state.save_section(self.section, self.produce())
        except (OSError, TypeError, ValueError) as exc:
            log.error("cannot save %s to %s: %s", self.what, self.state.path, exc)
            return False
        return True
