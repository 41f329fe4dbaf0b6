"""The `clients:` section: a name per key, the models it may use, its priority and limits.

Kept apart from supervisor.config (which imports it) so that the clients' rules live in
one package; the keys themselves are read when the clients are built (table.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from supervisor.config.values import PositiveDuration

ANONYMOUS = "anonymous"  # requests without a named client: no key, or a plain client_auth key

ClientName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class ClientConfig(BaseModel):
    """One named client: its key (an environment variable or a file of keys, one a line),
    the models it may use (names or aliases; none listed: all), its priority where requests
    wait (higher first), its starvation bound there (`max_wait`: past it, a waiting request
    goes before higher priorities; none: no bound), and its limits (none: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    key_file: Path | None = None
    key_env: str | None = None
    models: list[str] | None = None
    priority: int = 0
    max_wait: PositiveDuration | None = None
    max_concurrent: int | None = Field(None, ge=1)
    requests_per_minute: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_key_source(self) -> ClientConfig:
        if (self.key_file is None) == (self.key_env is None):
            raise ValueError("key_file: give exactly one of key_file and key_env")
        return self


def clients_problem(clients: Mapping[str, ClientConfig],
                    models: Mapping[str, Sequence[str]]) -> str | None:
    """'NAME.key: reason' for a client that names no model of the config; `models`: each
    model's aliases."""
    known = {alias for name, aliases in models.items() for alias in (name, *aliases)}
    for name, client in clients.items():
        if name == ANONYMOUS:
            return f"{name}: the name is reserved for requests without a named client"
        for model in client.models or ():
            if model not in known:
                return (f"{name}.models: {model!r} is not a model or alias "
                        f"(known: {', '.join(sorted(models))})")
    return None


def scope(client: ClientConfig, models: Mapping[str, Sequence[str]]) -> frozenset[str] | None:
    """The model names (never aliases) a client may use; None: all of them."""
    if client.models is None:
        return None
    owner = {alias: name for name, aliases in models.items() for alias in (name, *aliases)}
    return frozenset(owner[m] for m in client.models if m in owner)
