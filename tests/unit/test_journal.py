"""The request journal: lines written by its thread, rotated by size, and read back by
the simulator as a trace."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from supervisor.journal import Entry, Journal
from supervisor.simulate.trace import load

T0 = 1733230000.0


def entry(i: int, **changes: Any) -> Entry:
    """The i-th request, 10 s apart; the first waited 3 s on a cold start."""
    first = i == 0
    e = Entry(time=T0 + 10 * i, model="chat", profile="default", duration=4.5,
              held=3.0 if first else 0.0, start="cold" if first else "warm", status=200)
    return dataclasses.replace(e, **changes)


def test_records_come_back_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, max_bytes=1 << 20, keep=3)
    entries = [entry(0), entry(1, model="audio", profile="long", start="wake", held=1.25,
                            status=503)]
    for e in entries:
        journal.record(e)
    journal.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"time": e.time, "model": e.model, "profile": e.profile,
                      "duration": e.duration, "held": e.held, "start": e.start,
                      "status": e.status} for e in entries]


def test_the_thread_writes_without_waiting_for_close(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, max_bytes=1 << 20, keep=3, every=0.01)
    journal.start()
    journal.record(entry(0))
    try:
        deadline = time.monotonic() + 5
        while not (path.exists() and path.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert path.read_text().count("\n") == 1
    finally:
        journal.close()


def test_it_rotates_by_size_and_keeps_so_many(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    size = len(entry(0).line().encode())
    journal = Journal(path, max_bytes=10 * size, keep=2)
    for i in range(45):  # 4.5 files' worth: the current, .1, .2; the oldest are gone
        journal.record(entry(i))
    journal.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 10 * size
    times = [json.loads(line)["time"] for name in reversed(names)
             for line in (tmp_path / name).read_text().splitlines()]
    assert times == [T0 + 10 * i for i in range(20, 45)]  # in order, the newest 25


def test_keep_zero_keeps_only_the_current_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    size = len(entry(0).line().encode())
    journal = Journal(path, max_bytes=10 * size, keep=0)
    for i in range(25):
        journal.record(entry(i))
    journal.close()
    assert [p.name for p in tmp_path.iterdir()] == ["journal.jsonl"]
    assert path.read_text().count("\n") == 5


def test_the_simulator_replays_the_journal(tmp_path: Path) -> None:
    """Times from the first request; each served for its own time (duration less what it
    was held), as the replay adds the holds it simulates."""
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, max_bytes=1 << 20, keep=3)
    for i in range(3):
        journal.record(entry(i))
    journal.close()
    trace = load(path)
    assert trace.epoch == T0
    assert [(r.t, r.model, r.duration) for r in trace.requests] == [
        (0.0, "chat", 1.5), (10.0, "chat", 4.5), (20.0, "chat", 4.5)]
