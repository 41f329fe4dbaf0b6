"""One worker slot as the owner sees it: the process, its control channel, the virtual
flights it holds on the owner's handles, and its metrics (live and those of the
processes that held the slot before)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.lease import Flight
from supervisor.workers import stats
from supervisor.workers.messages import Message, encode

ACK_SECONDS = 1.0  # a worker that does not answer a fence this soon is treated as dead


class VirtualTask:
    """A busy worker's flight's task: cancelling it (a force stop, a dead server) tells
    the worker to cancel its exchanges for the model, with the flight's code."""

    def __init__(self, link: Link, model: str) -> None:
        self.link, self.model = link, model
        self.flight: Flight | None = None

    def cancel(self, msg: Any | None = None) -> bool:
        code = (self.flight.aborted if self.flight else None) or "model_stopped"
        self.link.send({"t": "abort", "m": self.model, "code": code})
        return True


class Link:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.pid: int | None = None
        self.restarts = 0
        self.in_flight = 0  # its requests in flight, as of its last stats message
        self.writer: asyncio.StreamWriter | None = None  # set once the worker said hello
        self.flights: dict[str, tuple[ModelHandle, Flight]] = {}
        self.current: stats.Snapshot = {}
        self.retired: stats.Snapshot = {}  # earlier processes' last totals
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)

    @property
    def alive(self) -> bool:
        return self.writer is not None

    def send(self, message: Message) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(encode(message))

    def busy(self, handle: ModelHandle) -> None:
        if handle.name in self.flights:
            return
        task = VirtualTask(self, handle.name)
        task.flight = handle.add_flight(task)
        self.flights[handle.name] = (handle, task.flight)

    def idle(self, name: str) -> None:
        held = self.flights.pop(name, None)
        if held is not None:
            held[0].end_flight(held[1])

    async def close(self, name: str) -> bool:
        """Close `name` on the worker; False when it did not acknowledge in time."""
        if self.writer is None:
            return True
        ident = next(self._ids)
        ack = self._acks[ident] = asyncio.get_running_loop().create_future()
        self.send({"t": "close", "m": name, "id": ident})
        try:
            await asyncio.wait_for(ack, ACK_SECONDS)
            return True
        except TimeoutError:
            return False
        finally:
            self._acks.pop(ident, None)

    def acked(self, ident: int) -> None:
        ack = self._acks.get(ident)
        if ack is not None and not ack.done():
            ack.set_result(None)

    def totals(self) -> stats.Snapshot:
        return stats.add(self.retired, self.current)

    def gone(self) -> None:
        """The process ended: its requests are over, its counts are kept."""
        self.writer = None
        self.in_flight = 0
        for ack in self._acks.values():
            if not ack.done():
                ack.set_result(None)  # nothing of it is in flight any more
        for handle, flight in self.flights.values():
            handle.end_flight(flight)
        self.flights.clear()
        self.retired, self.current = self.totals(), {}
