"""What the proxy checks before anything else, and operators set: client keys and
maintenance (drain) mode."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.auth import Secrets


@dataclass(slots=True)
class Gate:
    client_keys: Secrets = field(default_factory=lambda: Secrets([]))
    draining: bool = False
    retry_after: float = 30.0
