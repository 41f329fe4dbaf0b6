"""The CLI's side of the admin API: where it listens and its token, read from the
same config file and environment as the server, and a small urllib client.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from supervisor.auth import admin_token
from supervisor.config import AdminConfig, load_config

URL_ENV = "SUPERVISOR_ADMIN_URL"
CONFIG_ENV = "SUPERVISOR_CONFIG"


class AdminError(Exception):
    """The admin API refused a call or could not be reached; the message says which."""


@dataclass(frozen=True, slots=True)
class AdminClient:
    url: str
    token: str | None
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, config_path: str | None, url: str | None) -> AdminClient:
        """--admin / $SUPERVISOR_ADMIN_URL, else the config's admin.listen; the token
        from the config's token_env (default $SUPERVISOR_ADMIN_TOKEN), its _FILE, or file."""
        path = config_path or os.environ.get(CONFIG_ENV)
        admin = load_config(path).admin if path else AdminConfig()
        url = url or os.environ.get(URL_ENV) or f"http://{admin.listen}"
        return cls(url.rstrip("/"), admin_token(admin))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AdminError(f"{method} {path}: {exc.code} {_message(exc.read())}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminError(f"cannot reach the admin API at {self.url}: {reason}") from None


def _message(raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:300]
    problems = error.get("problems") or []
    return "\n  ".join([str(error.get("message")), *problems])


COLUMNS = ("MODEL", "STATE", "PROFILE", "PINNED", "IDLE", "TIMEOUT", "IN-FLIGHT", "HELD",
           "COLD START", "LAST ERROR")


def status_table(models: list[dict[str, Any]]) -> str:
    """One row per model, columns padded to fit."""
    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}s"

    rows = [COLUMNS] + [(
        m["name"], m["state"], m.get("profile") or "-", "yes" if m["pinned"] else "no",
        secs(m["idle_seconds"]), secs(m["idle_timeout"]), str(m["in_flight"]), str(m["held"]),
        "-" if m.get("last_cold_start_seconds") is None
        else f"{m['last_cold_start_seconds']:.1f}s",
        (m.get("last_error") or "-").splitlines()[0][:60] if m.get("last_error") else "-",
    ) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
