"""A worker's part of the clients' usage (`GET /admin/usage`, `supervisor_client_*`): the
fast path adds to the worker's own Client objects as it does in the owner, and about once
a second what they hold goes to the owner in a `usage` message and starts again from
zero here, so the owner, which adds it to its own clients, counts each request once.

Deltas are summed per client and model, so a message has at most a row per client and
model the config names, however many requests it counts; while the owner reads the
channel slowly they keep adding up here instead of queueing.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.clients.table import Clients
from supervisor.clients.usage import Usage
from supervisor.workers.journal_feed import BACKLOG
from supervisor.workers.messages import Message


def take(clients: Clients) -> Message | None:
    """What the clients used since the last call, as a message; their counts reset. None
    when nothing was used."""
    rows = []
    for client in clients.every():
        if client.usage:
            used, client.usage = client.usage, {}
            rows += [[client.name, model, *usage.row()] for model, usage in used.items()]
    return {"t": "usage", "rows": rows} if rows else None


def ship(clients: Clients, send: Callable[[Message], None],
         backlog: Callable[[], int]) -> None:
    """Send what was used unless over BACKLOG bytes wait for the owner (it then waits here,
    summed)."""
    if backlog() < BACKLOG and (message := take(clients)) is not None:
        send(message)


def add(clients: Clients, message: Message) -> None:
    """A worker's usage added to the owner's clients; a name the owner does not know (a
    client a reload removed) is left out. ValueError or TypeError on a row that is not one
    (nothing is added then)."""
    rows = [(str(name), str(model), Usage.from_row(counts))
            for name, model, *counts in message["rows"]]
    for name, model, usage in rows:
        client = clients.by_name(name)
        if client is not None:
            client.used(model).merge(usage)
