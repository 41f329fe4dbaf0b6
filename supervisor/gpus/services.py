"""The Compose services as Compose itself resolves them: `docker compose config --format
json`, with every profile enabled (model services usually sit in profiles so that a bare
`up` starts none). check-config and GPU placement read services only through this, so
interpolation, env files and `extends` are judged by Compose, never by a YAML parser here.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from supervisor.config import ComposeConfig
from supervisor.runtime.compose import compose_command

Services = dict[str, dict[str, Any]]


def read_services(compose: ComposeConfig | None,
                  timeout: float = 60.0) -> tuple[Services, str | None]:
    """(services by name, None), or ({}, 'compose.<key>: problem'). Blocking: a subprocess.
    No Compose section (runtime: swarm): no services, and no problem."""
    if compose is None:
        return {}, None
    if not compose.file.is_file():
        return {}, f"compose.file: {compose.file} does not exist"
    if compose.env_file is not None and not compose.env_file.is_file():
        return {}, f"compose.env_file: {compose.env_file} does not exist"
    cmd = [*compose_command(compose), "--profile", "*", "config", "--format", "json"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False,
            cwd=compose.file.parent,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"compose.file: cannot run `docker compose config`: {exc}"
    if done.returncode != 0:
        return {}, f"compose.file: docker compose cannot parse it: {done.stderr.strip()}"
    try:
        services = json.loads(done.stdout).get("services") or {}
    except (ValueError, AttributeError) as exc:
        return {}, f"compose.file: unexpected output of `docker compose config`: {exc}"
    return {str(k): v for k, v in services.items() if isinstance(v, dict)}, None
