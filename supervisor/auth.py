"""Secrets and their checks: the admin bearer token, the proxy's client keys and
the key injected for a backend.

Comparisons are constant-time over SHA-256 digests (so neither the content nor
the length of a key leaks through timing), and every key in a list is compared,
not just up to the first match. No secret is ever put in a message or a log.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from supervisor.config import (
    AdminConfig,
    ClientAuthConfig,
    Config,
    ConfigError,
    ModelConfig,
    host_port,
)

BEARER = "bearer "


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Secrets:
    """A set of accepted secrets; `matches` is constant-time in the value presented."""

    def __init__(self, values: Iterable[str]) -> None:
        self._digests = [_digest(v) for v in values if v]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __repr__(self) -> str:  # never the values, even in a debugger or traceback
        return f"Secrets({len(self._digests)} values)"

    def matches(self, presented: str | None) -> bool:
        offered = _digest(presented or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(offered, digest)
        return found and presented is not None

    def allows(self, authorization: str | None) -> bool:
        """Does an `Authorization: Bearer <secret>` header carry one of them?"""
        if authorization is None or authorization[: len(BEARER)].lower() != BEARER:
            return False
        return self.matches(authorization[len(BEARER) :].strip())


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError([f"{what}: cannot read {path}: {exc.strerror}"]) from exc


def read_secret(env: str | None, file: Path | None, key: str) -> str | None:
    """The `*_FILE` convention: the env var `env`, else the file named by `<env>_FILE`,
    else `file` from the config. `key` names the config key in errors, never the value."""
    if env:
        value = os.environ.get(env, "").strip()
        if value:
            return value
        named = os.environ.get(env + "_FILE", "").strip()
        if named:
            return _read(Path(named), f"{env}_FILE") or None
    if file is not None:
        return _read(file, key) or None
    return None


def admin_token(admin: AdminConfig) -> str | None:
    return read_secret(admin.token_env, admin.token_file, "admin.token_file")


def secret_lines(path: Path, key: str) -> list[str]:
    """A file of secrets, one a line; '#' starts a comment."""
    lines = (line.split("#", 1)[0].strip() for line in _read(path, key).splitlines())
    return [line for line in lines if line]


def plain_keys(auth: ClientAuthConfig) -> list[str]:
    """client_auth's keys: the anonymous client's (supervisor/clients/table.py)."""
    keys = [k for k in auth.keys if k]
    if auth.keys_file is not None:
        keys += secret_lines(auth.keys_file, "client_auth.keys_file")
    return keys


def upstream_key(name: str, model: ModelConfig) -> str | None:
    return read_secret(model.upstream_key_env, model.upstream_key_file,
                   f"models.{name}.upstream_key_file")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def admin_secrets(config: Config) -> Secrets:
    """The admin token, or none on loopback; refuse an open admin API on a network address."""
    token = admin_token(config.admin)
    host = host_port(config.admin.listen)[0]
    if token is None and not is_loopback(host):
        raise ConfigError([
            f"admin.listen: {config.admin.listen} is not a loopback address and no admin "
            f"token is set (set {config.admin.token_env}, {config.admin.token_env}_FILE "
            "or admin.token_file)"
        ])
    return Secrets([token] if token else [])
