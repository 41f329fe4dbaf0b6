"""A worker's requests in the owner's journal (workers/journal_feed.py): the rows a worker
collects go over the control channel as `journal` messages, bounded a message and while
the owner is slow, and the owner's fleet writes them to its Journal as lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest

from supervisor.journal import Entry, Journal
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics
from supervisor.proxy.gate import Gate
from supervisor.workers import journal_feed, messages
from supervisor.workers.journal_feed import JournalFeed
from supervisor.workers.owner import Fleet


class Channel:
    """The control channel, both ends: what one end wrote, as the other end reads it."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.lines.extend(data.splitlines(keepends=True))

    def send(self, message: messages.Message) -> None:
        self.write(messages.encode(message))

    def is_closing(self) -> bool:
        return False

    def sent(self, kind: str) -> list[messages.Message]:
        return [m for m in map(messages.decode, self.lines) if m["t"] == kind]


def serve(feed: JournalFeed, count: int, status: int = 200) -> None:
    for i in range(count):
        feed.served("chat", "default", 100.0 + i, 100.5 + i, 0.0, "warm", status)


def fleet(journal: Journal | None) -> Fleet:
    return Fleet(2, "/dev/null", "/nonexistent", Registry([]),
                 Metrics(snapshots=lambda: [], gpu=lambda: None), Gate(), Listeners(), journal)


async def owner_reads(fleet: Fleet, lines: list[bytes]) -> None:
    """The owner's loop for its one worker, over a channel that says these lines then
    ends (the worker said hello first)."""
    reader = asyncio.StreamReader()
    reader.feed_data(messages.encode({"t": "hello", "pid": 1}) + b"".join(lines))
    reader.feed_eof()
    await fleet._serve(fleet.links[0], reader, cast(asyncio.StreamWriter, Channel()))


async def test_a_workers_requests_become_the_owners_journal_lines(tmp_path: Path) -> None:
    feed, worker = JournalFeed(), Channel()
    before = time.time()
    serve(feed, 3)
    feed.served("chat", "long", 0.0, 2.0, 0.0, "warm", 503)
    feed.ship(worker.send, lambda: 0)
    (message,) = worker.sent("journal")
    entries = messages.journal_entries(message)
    assert [(e.model, e.profile, e.duration, e.held, e.start, e.status) for e in entries] == [
        ("chat", "default", 0.5, 0.0, "warm", 200)] * 3 + [("chat", "long", 2.0, 0.0, "warm",
                                                           503)]
    assert all(before - e.duration - 1 <= e.time <= time.time() for e in entries)
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, max_bytes=1 << 20, keep=1)
    await owner_reads(fleet(journal), worker.lines)
    journal.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["model"], x["start"], x["status"]) for x in lines] == [
        ("chat", "warm", 200)] * 3 + [("chat", "warm", 503)]
    assert [x["time"] for x in lines] == [round(e.time, 3) for e in entries]


async def test_without_a_journal_the_owner_ignores_rows_and_a_bad_message_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    feed, worker = JournalFeed(), Channel()
    serve(feed, 2)
    feed.ship(worker.send, lambda: 0)
    await owner_reads(fleet(None), worker.lines)  # nothing to write them to: no error
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, max_bytes=1 << 20, keep=1)
    bad = [messages.encode({"t": "journal", "rows": [[1.0, "m", "p", 1.0, 0.0, "hot", 200]]}),
           messages.encode({"t": "journal", "rows": [[1.0, "m"]]})]
    with caplog.at_level(logging.WARNING):
        await owner_reads(fleet(journal), bad + worker.lines)
    journal.close()
    assert sum("not one" in r.getMessage() for r in caplog.records) == 2
    assert len(path.read_text().splitlines()) == 2  # the good rows after the bad ones


def test_a_message_carries_at_most_a_batch() -> None:
    feed, worker = JournalFeed(), Channel()
    serve(feed, journal_feed.BATCH * 2 + 1)
    feed.ship(worker.send, lambda: 0)
    assert [len(m["rows"]) for m in worker.sent("journal")] == [
        journal_feed.BATCH, journal_feed.BATCH, 1]
    assert len(feed) == 0


def test_a_slow_owner_keeps_rows_here_and_a_full_buffer_drops_the_oldest(
        caplog: pytest.LogCaptureFixture) -> None:
    feed, worker = JournalFeed(buffer=5), Channel()
    for status in range(200, 208):  # 8 rows into 5 places: 200..202 dropped
        feed.served("chat", "default", 0.0, 1.0, 0.0, "warm", status)
    backlog = [journal_feed.BACKLOG]
    with caplog.at_level(logging.WARNING):
        feed.ship(worker.send, lambda: backlog[0])  # the owner is behind: nothing sent
        feed.ship(worker.send, lambda: backlog[0])  # the same drops are not told twice
    assert worker.sent("journal") == [] and len(feed) == 5 and feed.dropped == 3
    assert [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()] == [
        f"worker {os.getpid()}: the owner reads too slowly: 3 journal lines dropped (3 in all)"]
    backlog[0] = 0
    feed.ship(worker.send, lambda: backlog[0])
    (message,) = worker.sent("journal")
    assert [row[-1] for row in message["rows"]] == [203, 204, 205, 206, 207]


def test_rows_are_journal_entries_field_for_field() -> None:
    """A row is journal.Entry's fields in order: the two cannot drift apart unseen."""
    row: Any = [1.5, "m", "p", 2.0, 0.25, "cold", 200]
    (entry,) = messages.journal_entries(messages.journal([tuple(row)]))
    assert entry == Entry(*row)
