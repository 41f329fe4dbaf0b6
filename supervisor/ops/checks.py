"""`check-config`: find what would break at run time before anything starts.

Beyond the schema, it asks the real `docker compose config` to parse the
Compose file (so interpolation, profiles and extends are judged by Compose
itself) and checks that each model's service exists there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from supervisor.config import Config
from supervisor.runtime.compose import compose_command


def _compose_services(config: Config) -> tuple[set[str], str | None]:
    compose = config.compose
    if not compose.file.is_file():
        return set(), f"compose.file: {compose.file} does not exist"
    if compose.env_file is not None and not compose.env_file.is_file():
        return set(), f"compose.env_file: {compose.env_file} does not exist"
    # Every profile: model services usually sit in profiles so `up` alone starts none.
    cmd = [*compose_command(compose), "--profile", "*", "config", "--format", "json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return set(), f"compose.file: cannot run `docker compose config`: {exc}"
    if done.returncode != 0:
        return set(), f"compose.file: docker compose cannot parse it: {done.stderr.strip()}"
    return set(json.loads(done.stdout).get("services", {})), None


def context_limit(model_dir: Path) -> tuple[int, str] | None:
    """The longest context a model's weights support, from its config.json, and why.

    vLLM accepts a larger max_model_len and then dies with a CUDA device-side
    assert once a request goes past the positions the model was trained on.
    """
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for section in (raw, raw.get("text_config") or {}, raw.get("llm_config") or {}):
        positions = section.get("max_position_embeddings")
        if isinstance(positions, int):
            break
    else:
        return None
    scaling = section.get("rope_scaling") or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    if isinstance(factor, int | float) and factor > 1:
        base = scaling.get("original_max_position_embeddings") or positions
        return int(base * factor), (
            f"max_position_embeddings {base} x rope_scaling factor {factor:g}"
        )
    return positions, f"max_position_embeddings {positions}"


def check(config: Config) -> list[str]:
    """Problems as 'key.path: reason' lines; empty when the config is usable."""
    services, problem = _compose_services(config)
    problems = [problem] if problem else []
    for name, model in config.models.items():
        limit = context_limit(model.model_dir) if model.model_dir else None
        for pname, profile in model.profiles.items():
            key = f"models.{name}" + ("" if model.service else f".profiles.{pname}")
            if not problem and profile.service not in services:
                problems.append(
                    f"{key}.service: {profile.service!r} is not a service of "
                    f"{config.compose.file} (it has: {', '.join(sorted(services)) or 'none'})"
                )
            if limit and profile.max_model_len and profile.max_model_len > limit[0]:
                problems.append(
                    f"{key}.max_model_len: {profile.max_model_len} "
                    f"exceeds what the model supports: {limit[1]} = {limit[0]} "
                    f"(from {model.model_dir}/config.json)"
                )
    return problems
