"""`check-config`: find what would break at run time before anything starts.

Beyond the schema, it asks the real `docker compose config` to parse the
Compose file (so interpolation, profiles and extends are judged by Compose
itself) and checks that each model's service exists there.
"""

from __future__ import annotations

import json
import subprocess

from supervisor.config import Config


def _compose_services(config: Config) -> tuple[set[str], str | None]:
    compose = config.compose
    if not compose.file.is_file():
        return set(), f"compose.file: {compose.file} does not exist"
    cmd = [*compose.command, "-f", str(compose.file)]
    if compose.env_file is not None:
        if not compose.env_file.is_file():
            return set(), f"compose.env_file: {compose.env_file} does not exist"
        cmd += ["--env-file", str(compose.env_file)]
    # Every profile: model services usually sit in profiles so `up` alone starts none.
    cmd += ["-p", compose.project, "--profile", "*", "config", "--format", "json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return set(), f"compose.file: cannot run `docker compose config`: {exc}"
    if done.returncode != 0:
        return set(), f"compose.file: docker compose cannot parse it: {done.stderr.strip()}"
    return set(json.loads(done.stdout).get("services", {})), None


def check(config: Config) -> list[str]:
    """Problems as 'key.path: reason' lines; empty when the config is usable."""
    services, problem = _compose_services(config)
    if problem:
        return [problem]
    return [
        f"models.{name}.service: {model.service!r} is not a service of {config.compose.file} "
        f"(it has: {', '.join(sorted(services)) or 'none'})"
        for name, model in config.models.items()
        if model.service not in services
    ]
