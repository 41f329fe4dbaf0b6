"""What the proxy checks before anything else, and operators set: the clients (their keys,
scopes and limits) and maintenance (drain) mode."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.clients.table import Clients


@dataclass(slots=True)
class Gate:
    clients: Clients = field(default_factory=Clients)
    draining: bool = False
    retry_after: float = 30.0
