"""The lifecycle owner's side of the worker processes: it spawns N-1 of them (each binds
the proxy port with SO_REUSEPORT and forwards for the models the owner says are ready),
restarts one that exits, writes the requests they forwarded to the journal (with
`journal:`), adds what their clients used to its own clients' usage, pushes them the
table of units (models, and each replica of a model that has replicas) on every change
of state, counts a busy worker as one request in flight on the unit's handle, and fences
them before every decision that needs "nothing in flight" (the idle stop, the sleep
tier, an eviction). It hears the units as a listener (lifecycle/listeners.py):
subscribed while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from supervisor.journal import Journal
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics
from supervisor.proxy.gate import Gate
from supervisor.rules.table import State
from supervisor.workers import stats, usage_feed
from supervisor.workers.link import Link
from supervisor.workers.messages import LINE_LIMIT, Entry, Message, journal_entries, read, table
from supervisor.workers.worker import GRACE_SECONDS

log = logging.getLogger(__name__)
T = TypeVar("T")

RESTART_SECONDS = 1.0
STOP_SECONDS = GRACE_SECONDS + 2.0  # a worker's grace, and its exit
REST_SECONDS = 1.0  # to read what an exited worker sent last (its totals, journal rows)
_FLIGHT_STATES = (State.READY, State.DRAINING, State.SLEEPING)  # a leased request may end


class Fleet:
    def __init__(self, count: int, config_path: str, owner_socket: str, registry: Registry,
                 metrics: Metrics, gate: Gate, listeners: Listeners,
                 journal: Journal | None = None) -> None:
        self.links = [Link(slot) for slot in range(1, count)]
        self.journal = journal  # with it, the workers send what they forwarded (journal_feed)
        self.config_path, self.owner_socket = config_path, owner_socket
        self.registry, self.metrics, self.gate = registry, metrics, gate
        self.listeners = listeners
        self.fencing: dict[str, int] = {}
        self._push_due = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: list[asyncio.Task[Any]] = []  # each slot's loop (_run)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False

    # -- processes --------------------------------------------------------------------

    def start(self) -> None:
        self.listeners.add(self)  # its units' changes and fences, from now on
        self._slots = [self._spawn(self._run(link)) for link in self.links]
        self._spawn(self._heartbeat())

    async def _run(self, link: Link) -> None:
        while not self._stopping:
            began = time.monotonic()
            try:
                await self._one(link)
            except Exception:
                log.exception("worker %d failed", link.slot)
            finally:
                link.gone()
                self.push()
            if self._stopping:
                return
            link.restarts += 1
            log.warning("worker %d (pid %s) exited; restarting it", link.slot, link.pid)
            await asyncio.sleep(max(0.0, RESTART_SECONDS - (time.monotonic() - began)))

    async def _one(self, link: Link) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "supervisor", "worker", "--config", self.config_path,
                "--fd", str(theirs.fileno()), "--owner", self.owner_socket,
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        link.pid = proc.pid
        self._procs[proc.pid] = proc
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=LINE_LIMIT)
            try:
                await self._serve(link, reader, writer)
            finally:
                writer.close()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
            self._procs.pop(proc.pid, None)

    async def _serve(self, link: Link, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        while (message := await read(reader)) is not None:
            kind = message["t"]
            if kind != "hello" and link.writer is not writer:
                return  # given up for dead (a fence it did not answer): it is killed
            if kind == "hello":
                link.writer = writer
                log.info("worker %d (pid %s) is serving", link.slot, link.pid)
                link.send(self._table())
            elif kind == "busy":
                self._busy(link, message["m"])
            elif kind == "idle":
                link.idle(message["m"])
            elif kind == "ack":
                link.acked(message["id"])
            elif kind == "stats":
                link.current = message["stats"]
                link.in_flight = int(message.get("in_flight", 0))
            elif kind == "journal":
                self._journal(link, message)
            elif kind == "usage":
                self._usage(link, message)
            elif kind == "failed":
                handle = self._handle(message["m"])
                if handle is not None:
                    self._spawn(handle.upstream_failed())

    def _journal(self, link: Link, message: Message) -> None:
        if self.journal is not None:
            for entry in self._decoded(link, message, journal_entries) or ():
                self.journal.record(entry)

    def _usage(self, link: Link, message: Message) -> None:
        """What the worker's clients used: added to the owner's (whose clients a reload
        may have replaced since the worker started: matched by name)."""
        self._decoded(link, message, lambda m: usage_feed.add(self.gate.clients, m))

    def _decoded(self, link: Link, message: Message, parse: Callable[[Message], T]
                 ) -> T | None:
        """`parse(message)`, or None (and a warning) for a message that is not one: a bug in
        the worker costs its lines or counts, not a restart."""
        try:
            return parse(message)
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("worker %d: a %s message that is not one (%s)", link.slot,
                        message["t"], exc)
            return None

    def _busy(self, link: Link, name: str) -> None:
        handle = self._handle(name)
        if handle is None:
            link.send({"t": "abort", "m": name, "code": "model_stopped"})
            return
        link.busy(handle)
        if handle.state not in _FLIGHT_STATES:  # stopped while the message was on its way
            link.send({"t": "abort", "m": name, "code": "model_stopped"})

    async def stop(self) -> None:
        """Shutdown: SIGTERM every worker (by its PID); each stops listening and lets what
        it forwards end (worker.GRACE_SECONDS); one still there after that is killed."""
        self._stopping = True
        procs = list(self._procs.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        waits = [asyncio.wait_for(proc.wait(), STOP_SECONDS) for proc in procs]
        for proc, ended in zip(procs, await asyncio.gather(*waits, return_exceptions=True),
                               strict=True):
            if isinstance(ended, BaseException):
                log.warning("worker pid %d did not exit in %.0f s: killing it", proc.pid,
                            STOP_SECONDS)
        # A slot whose worker exited reads its channel to the end, then ends by itself.
        if self._slots:
            await asyncio.wait(self._slots, timeout=REST_SECONDS)
        for task in list(self._tasks):
            task.cancel()  # what is left of each slot's loop kills its process and waits
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.listeners.remove(self)  # alone again: its units' decisions need no fence

    def reload(self) -> None:
        """The config file changed: each worker is restarted to read it (one at a time
        would be gentler; the others and the owner serve meanwhile either way)."""
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the model table ------------------------------------------------------------------

    def _handle(self, name: str) -> ModelHandle | None:
        return self.registry.unit(name)

    def _table(self) -> dict[str, Any]:
        entries = [Entry(u.name, u.state is State.READY and u.name not in self.fencing,
                         u.profile.name, u.upstream) for u in self.registry.units()]
        return table(entries, draining=self.gate.draining)

    def push(self) -> None:
        """Send the table to every worker, once per loop tick however many changes."""
        if not self._push_due:
            self._push_due = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._push_due = False
        message = self._table()
        for link in self.links:
            link.send(message)

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        self.push()

    async def _heartbeat(self) -> None:
        """Drain mode and reloads change no handle: a table a second carries them."""
        while True:
            await asyncio.sleep(1.0)
            self.push()

    # -- the fence ------------------------------------------------------------------------

    def fence(self, handle: ModelHandle, then: Callable[[], None]) -> None:
        name = handle.name
        self.fencing[name] = self.fencing.get(name, 0) + 1
        self._spawn(self._fence(name, then))

    async def _fence(self, name: str, then: Callable[[], None]) -> None:
        try:
            links = [link for link in self.links if link.alive]
            answered = await asyncio.gather(*(link.close(name) for link in links))
            for link, ok in zip(links, answered, strict=True):
                if ok:
                    continue
                log.warning("worker %d (pid %s) did not answer a fence within 1 s: "
                            "restarting it", link.slot, link.pid)
                if link.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(link.pid, signal.SIGKILL)
                link.gone()  # its flights end now; the process follows
            then()
        except Exception:
            log.exception("model=%s: a decision after the workers' fence failed", name)
        finally:
            left = self.fencing.get(name, 1) - 1
            if left:
                self.fencing[name] = left
            else:
                self.fencing.pop(name, None)
            self.push()

    # -- views ----------------------------------------------------------------------------

    def scrape(self) -> stats.Merged:
        """What GET /metrics renders: the owner's registry with the workers' counts."""
        return stats.Merged(self.metrics, self.totals())

    def totals(self) -> stats.Snapshot:
        total: stats.Snapshot = {}
        for link in self.links:
            total = stats.add(total, link.totals())
        return total

    def describe(self) -> list[dict[str, Any]]:
        own = stats.forwarded(stats.snapshot(self.metrics))
        flights = sum(h.in_flight for h in self.registry.handles.values()) - sum(
            len(link.flights) for link in self.links)  # less the workers' virtual ones
        rows = [{"slot": 0, "role": "owner", "pid": os.getpid(), "alive": True,
                 "restarts": 0, "requests_forwarded": own, "in_flight": flights}]
        for link in self.links:
            rows.append({"slot": link.slot, "role": "worker", "pid": link.pid,
                         "alive": link.alive, "restarts": link.restarts,
                         "requests_forwarded": stats.forwarded(link.totals()),
                         "in_flight": link.in_flight})
        return rows
