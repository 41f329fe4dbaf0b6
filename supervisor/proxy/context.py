"""What the fast path's parts share: the application's objects it reads (`Context`) and an
upstream URL parsed once (`Target`). Apart from fastpath.py so that the exchange and the
client connection name them without importing the data plane that imports them."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.clients.table import Client
from supervisor.journal import Recorder
from supervisor.lifecycle.servable import Catalog
from supervisor.observe.metrics import Metrics
from supervisor.proxy.gate import Gate
from supervisor.proxy.policy import forwarded_client


class Target:
    """Where a model's upstream URL points, parsed once."""

    __slots__ = ("host", "key", "prefix")

    def __init__(self, host: bytes, key: tuple[str, int], prefix: bytes) -> None:
        self.host, self.key, self.prefix = host, key, prefix


@dataclass(slots=True)
class Context:
    """The application's objects the fast path reads (there once the app has started)."""

    registry: Catalog
    metrics: Metrics
    gate: Gate
    journal: Recorder | None = None  # the owner's Journal, or a worker's feed of it
    # Whether this process applies the clients' limits. A worker does not: a client's
    # `max_concurrent` and `requests_per_minute` hold across every process only where one
    # Gate counts them, the owner's, so a worker relays a limited client's requests there.
    limits: bool = True

    def client_of(self, authorization: bytes | None) -> Client | None:
        """Whose key it is, when forwarded as it is here (policy.forwarded_client); None:
        the application answers it (in a worker: the owner, where a limited client's
        requests are admitted, so the worker never takes a token or a slot for one)."""
        client = forwarded_client(self.gate, authorization)
        if client is not None and client.limited and not self.limits:
            return None
        return client
