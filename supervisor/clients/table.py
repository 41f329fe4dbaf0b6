"""Who sent a request (its key's client), whether it may, and what it used: the one place
both proxy paths ask, at the cost of a hash and a dict lookup per request.

Keys are found by their SHA-256 digest, so neither a key nor its length leaks through a
comparison, and only digests are kept. No key is ever put in a message or a log.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping

from supervisor.auth import BEARER, plain_keys, read_secret, secret_lines
from supervisor.clients.fairness import Asker
from supervisor.clients.limits import Slots, TokenBucket, retry_after
from supervisor.clients.usage import Usage
from supervisor.config import Config, ConfigError
from supervisor.config.clients import ANONYMOUS, ClientConfig, scope
from supervisor.refusal import Refusal

_BEARER = BEARER.encode()


class ModelNotAllowed(Refusal):
    status, code = 403, "model_not_allowed"


class RateLimited(Refusal):
    status, code = 429, "rate_limited"


class Client:
    """A named client (or `anonymous`): its scope, priority, limits and usage."""

    __slots__ = ("asker", "bucket", "limited", "models", "name", "priority", "slots", "usage")

    def __init__(self, name: str, *, models: frozenset[str] | None = None, priority: int = 0,
                 per_minute: int | None = None, concurrent: int | None = None,
                 now: float = 0.0, max_wait: float | None = None) -> None:
        self.name = name
        self.models = models  # model names (not aliases); None: every model
        self.priority = priority
        self.asker = Asker(name, priority, max_wait)  # who waits, where requests wait
        self.bucket = TokenBucket(per_minute, now) if per_minute else None
        self.slots = Slots(concurrent) if concurrent else None
        # Limits hold across processes only where one process applies them: a worker
        # relays this client's requests to the owner (proxy/context.py `Context.limits`).
        self.limited = self.bucket is not None or self.slots is not None
        self.usage: dict[str, Usage] = {}  # per model

    def __repr__(self) -> str:
        return f"Client({self.name!r})"

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def forbidden(self, model: str) -> Refusal:
        return ModelNotAllowed(f"client {self.name!r} may not use model {model!r}",
                               model=model)

    def admit(self, model: str, now: float) -> Refusal | None:
        """None, with a token and a slot taken (give them back with `done`), or why not."""
        if self.models is not None and model not in self.models:
            return self.forbidden(model)
        bucket, slots = self.bucket, self.slots
        if bucket is not None and (wait := bucket.take(now)):
            per_minute = int(bucket.capacity)
            return RateLimited(f"client {self.name!r} is over its limit of {per_minute} "
                               f"requests per minute; retry in {wait:.1f} s",
                               retry_after=retry_after(wait), model=model)
        if slots is not None and (wait := slots.take(now)):
            if bucket is not None:
                bucket.tokens += 1.0  # not served: its token is not spent
            return RateLimited(f"client {self.name!r} has {slots.limit} requests under way, "
                               f"its max_concurrent; retry in about {wait:.1f} s",
                               retry_after=retry_after(wait), model=model)
        return None

    def done(self, began: float, now: float, *, served: bool = True) -> None:
        """An admitted request ended; not `served`: handed to the other path, which admits
        it again, so its token is given back too."""
        if self.slots is not None:
            self.slots.give(began, now)
        if not served and self.bucket is not None:
            self.bucket.tokens += 1.0

    def record(self, model: str, seconds: float, held: float,
               tokens: tuple[int, int] | None) -> None:
        """A request a model answered: its time, its time held, its tokens when known."""
        self.used(model).add(seconds, held, tokens)

    def used(self, model: str) -> Usage:
        usage = self.usage.get(model)
        if usage is None:
            usage = self.usage[model] = Usage()
        return usage

    def carry_from(self, old: Client, config: ClientConfig, now: float) -> None:
        """A reload keeps what the client used, its running requests and its spent tokens."""
        self.usage = old.usage
        if self.bucket is not None and old.bucket is not None and config.requests_per_minute:
            self.bucket = old.bucket.resized(config.requests_per_minute, now)
        if self.slots is not None and old.slots is not None:
            self.slots.running, self.slots.mean = old.slots.running, old.slots.mean


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class Clients:
    """Every client by its key's digest; without any key configured, every request is
    `anonymous` (no check, no limit)."""

    def __init__(self, named: Mapping[str, Client] | None = None,
                 keys: Mapping[bytes, Client] | None = None,
                 anonymous: Client | None = None) -> None:
        self.anonymous = anonymous or Client(ANONYMOUS)
        self.named = dict(named or {})
        self._by_digest = dict(keys or {})
        self.required = bool(self._by_digest)

    def __repr__(self) -> str:  # never a key, even in a debugger or traceback
        return f"Clients({sorted(self.named)}, {len(self._by_digest)} keys)"

    def identify(self, authorization: bytes | str | None) -> Client | None:
        """The client whose key an `Authorization: Bearer <key>` header carries; None
        when keys are configured and it carries none of them."""
        if not self.required:
            return self.anonymous
        if authorization is None:
            return None
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        if authorization[:7].lower() != _BEARER:
            return None
        key = authorization[7:].strip().decode("latin-1")
        return self._by_digest.get(_digest(key.encode())) if key else None

    def every(self) -> Iterable[Client]:
        yield self.anonymous
        yield from self.named.values()

    def by_name(self, name: str) -> Client | None:
        return self.anonymous if name == self.anonymous.name else self.named.get(name)

    def carry_from(self, old: Clients, configs: Mapping[str, ClientConfig]) -> None:
        now = time.monotonic()
        self.anonymous.usage = old.anonymous.usage
        for name, client in self.named.items():
            if name in old.named:
                client.carry_from(old.named[name], configs[name], now)


def _keys_of(name: str, client: ClientConfig) -> list[str]:
    if client.key_env is not None:
        value = read_secret(client.key_env, None, f"clients.{name}.key_file")
        if value is None:
            raise ConfigError([f"clients.{name}.key_env: {client.key_env} is not set"])
        return [value]
    assert client.key_file is not None
    keys = secret_lines(client.key_file, f"clients.{name}.key_file")
    if not keys:
        raise ConfigError([f"clients.{name}.key_file: {client.key_file} holds no key"])
    return keys


def build_clients(config: Config, old: Clients | None = None) -> Clients:
    """The clients of a config, their keys read now (ConfigError when one cannot be);
    client_auth's keys are the anonymous client's. With `old`, what each kept client used
    and holds carries over (a reload)."""
    models = {name: model.aliases for name, model in config.models.items()}
    now = time.monotonic()
    anonymous = Client(ANONYMOUS)
    named: dict[str, Client] = {}
    keys = {_digest(key.encode()): anonymous for key in plain_keys(config.client_auth)}
    for name, conf in config.clients.items():
        client = named[name] = Client(
            name, models=scope(conf, models), priority=conf.priority,
            per_minute=conf.requests_per_minute, concurrent=conf.max_concurrent, now=now,
            max_wait=conf.max_wait)
        for key in _keys_of(name, conf):
            other = keys.setdefault(_digest(key.encode()), client)
            if other is not client:
                raise ConfigError([f"clients.{name}: a key of it is also the key of "
                                   f"{other.name!r}"])
    built = Clients(named, keys, anonymous)
    if old is not None:
        built.carry_from(old, config.clients)
    return built

