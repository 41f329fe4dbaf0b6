"""The supervisor's configuration: one pydantic model, validated once at start.

The YAML file is the base; any key can be overridden by a `SUPERVISOR_`
environment variable (nested keys joined by `__`, e.g.
`SUPERVISOR_MODELS__CHAT__IDLE_TIMEOUT=5m`), so a container can tweak a
deployment without editing the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from supervisor.config.clients import ClientConfig, ClientName, clients_problem
from supervisor.config.model import (
    TARGET_HINT,
    ModelConfig,
    replica_defaults,
    replicas_problem,
    scalable_problem,
)
from supervisor.config.sections import (
    AdminConfig,
    ClientAuthConfig,
    ComposeConfig,
    HttpConfig,
    LivenessConfig,
    ProfileConfig,
    ReplicaConfig,
    ScalableReplicas,
    ScheduleConfig,
    SleepConfig,
    SwarmConfig,
    WarmupConfig,
)
from supervisor.config.values import (
    ByteSize,
    Cron,
    Duration,
    GpuIndices,
    ListenAddress,
    PositiveByteSize,
    PositiveDuration,
    TimeZone,
    UpstreamUrl,
    host_port,
    parse_bytes,
    parse_duration,
)

__all__ = [
    "TARGET_HINT",
    "AdminConfig",
    "ByteSize",
    "ClientAuthConfig",
    "ComposeConfig",
    "Config",
    "ConfigError",
    "Cron",
    "Duration",
    "GpuIndices",
    "HttpConfig",
    "ListenAddress",
    "LivenessConfig",
    "ModelConfig",
    "PositiveByteSize",
    "PositiveDuration",
    "ProfileConfig",
    "ReplicaConfig",
    "ScalableReplicas",
    "ScheduleConfig",
    "SleepConfig",
    "SwarmConfig",
    "TimeZone",
    "UpstreamUrl",
    "WarmupConfig",
    "host_port",
    "load_config",
    "parse_bytes",
    "parse_duration",
    "replica_defaults",
    "replicas_problem",
    "scalable_problem",
    "schedule_problem",
]


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SUPERVISOR_", env_nested_delimiter="__", extra="forbid"
    )

    listen: ListenAddress = "127.0.0.1:8080"
    # What runs the models' services: `docker compose` on this host (`compose:`), or the
    # services of a Docker Swarm stack across nodes (`swarm:`).
    runtime: Literal["compose", "swarm"] = "compose"
    compose: ComposeConfig | None = Field(None, validate_default=True)  # for runtime: compose
    swarm: SwarmConfig | None = Field(None, validate_default=True)  # for runtime: swarm
    models: dict[str, ModelConfig] = Field(min_length=1)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    admin: AdminConfig = AdminConfig()
    http: HttpConfig = HttpConfig()
    client_auth: ClientAuthConfig = ClientAuthConfig()
    # Named clients (supervisor/clients/): a key each, the models it may use, its priority
    # where requests wait and its limits. client_auth's keys are the `anonymous` client's.
    clients: dict[ClientName, ClientConfig] = {}
    drain_retry_after: Duration = 30.0  # Retry-After while in maintenance (drain) mode
    timezone: TimeZone = "UTC"  # for schedules
    schedules: dict[str, ScheduleConfig] = {}
    # Runtime toggles (pin, idle timeout, schedules added through the admin API).
    # Default: <config name>.state.json next to the config file; none: memory only.
    state_file: Path | None = None
    # One JSON line per request (supervisor/journal.py), what `simulate --trace` replays;
    # rotated past journal_max_bytes, journal_keep old files kept (PATH.1 the newest).
    journal: Path | None = None
    journal_max_bytes: Annotated[ByteSize, Field(ge=4096)] = 64 << 20
    journal_keep: int = Field(3, ge=0)
    # GPU inventory: total memory per GPU index; declares GPUs NVML cannot see (a CPU-only
    # test) or overrides what it reports. With neither, placement is off.
    gpus: dict[Annotated[int, Field(ge=0)], PositiveByteSize] = {}
    # Host RAM that level-1 sleepers' weights may take together (sleep.host_bytes each);
    # past it the least recently used one goes to level 2. None: what MemAvailable says.
    host_memory: PositiveByteSize | None = None
    # Request bodies held in memory at once (JSON bodies up to 1 MiB; larger ones go to
    # TMPDIR and hold 2 MiB each). Past it, new bodies wait, then get 503 (proxy/body_budget.py).
    max_body_memory: Annotated[ByteSize, Field(ge=16 << 20)] = 1 << 30
    # Open client connections on the proxy listener; past it a new client gets 503 at once
    # instead of taking the last file descriptor. None: (soft open-files limit - fd_reserve)
    # / 2, as each request holds two (client and model server). The reserve keeps the admin
    # API, health checks and `docker compose` running.
    max_connections: int | None = Field(None, ge=1)
    fd_reserve: int = Field(128, ge=0)
    # Small JSON requests for a ready model are forwarded by the listener itself
    # (proxy/fastpath.py), everything else by the aiohttp application; false: all by it.
    fast_path: bool = True
    # Processes forwarding on the proxy port: this one (the lifecycle owner) and workers - 1
    # that it spawns, each on the port with SO_REUSEPORT (docs/multi-worker.md). Needs
    # fast_path (a worker is a fast path and nothing else).
    workers: int = Field(1, ge=1, le=256)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; the environment wins over it.
        return env_settings, init_settings

    @field_validator("compose", "swarm", mode="after")
    @classmethod
    def _runtime_has_its_section(cls, value: Any, info: ValidationInfo) -> Any:
        """The section of the runtime in use is required (checked per field, so that the
        error comes with the others, not instead of them)."""
        if value is None and info.data.get("runtime") == info.field_name:
            raise ValueError("required key is missing")
        return value

    @model_validator(mode="after")
    def _names_are_unique(self) -> Config:
        owner: dict[str, str] = {}
        for name, model in self.models.items():
            for alias in [name, *model.aliases]:
                if alias in owner and owner[alias] != name:
                    raise ValueError(
                        f"models.{name}.aliases: {alias!r} is already a name or alias "
                        f"of model {owner[alias]!r}"
                    )
                owner[alias] = name
        problem = clients_problem(self.clients, {n: m.aliases for n, m in self.models.items()})
        if problem:
            raise ValueError(f"clients.{problem}")
        for name, schedule in self.schedules.items():
            problem = schedule_problem(self, schedule)
            if problem:
                raise ValueError(f"schedules.{name}.{problem}")
        return self

    @model_validator(mode="after")
    def _workers_need_the_fast_path(self) -> Config:
        if self.workers > 1 and not self.fast_path:
            raise ValueError("workers: more than 1 needs fast_path: true (a worker runs "
                             "only the fast path)")
        return self

    @model_validator(mode="after")
    def _replicas_scale_only_where_the_runtime_can(self) -> Config:
        # Compose cannot scale one service to several servers on their own ports.
        for name, model in self.models.items():
            if self.runtime == "compose" and isinstance(model.replicas, ScalableReplicas):
                raise ValueError(
                    f"models.{name}.replicas: {{min, max}} needs a runtime that can scale a "
                    "service (Docker Swarm); with Compose, list each replica: "
                    "[{service, upstream}, ...]")
            problem = scalable_problem(model)
            if problem:
                raise ValueError(f"models.{name}.{problem}")
        return self



def schedule_problem(config: Config, schedule: ScheduleConfig) -> str | None:
    """'key: reason' when a schedule names a model or profile the config lacks."""
    model = config.models.get(schedule.model)
    if model is None:
        return f"model: {schedule.model!r} is not a model (known: {', '.join(config.models)})"
    if schedule.profile is not None and schedule.profile not in model.profiles:
        return (f"profile: {schedule.profile!r} is not a profile of {schedule.model!r} "
                f"({', '.join(model.profiles)})")
    return None


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` are 'key.path: reason' lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_KEY_PREFIX = re.compile(r"^([a-z_][\w.-]*): ")


def _format(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        # Model-level checks name the key inside the model: "default_profile: ...".
        key = _KEY_PREFIX.match(message)
        if key and path and not message.startswith(path):
            path, message = f"{path}.{key.group(1)}", message[key.end() :]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{path}: {message}" if path else message)
    return lines


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config file; raise ConfigError naming each bad key."""
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level"])
    try:
        config = Config(**raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from exc
    compose = config.compose
    if compose is not None:
        compose.file = (path.parent / compose.file).resolve()
        if compose.env_file is not None:
            compose.env_file = (path.parent / compose.env_file).resolve()
    for model in config.models.values():
        if model.model_dir is not None:
            model.model_dir = (path.parent / model.model_dir).resolve()
        if model.upstream_key_file is not None:
            model.upstream_key_file = (path.parent / model.upstream_key_file).resolve()
    if config.admin.token_file is not None:
        config.admin.token_file = (path.parent / config.admin.token_file).resolve()
    if config.client_auth.keys_file is not None:
        config.client_auth.keys_file = (path.parent / config.client_auth.keys_file).resolve()
    for client in config.clients.values():
        if client.key_file is not None:
            client.key_file = (path.parent / client.key_file).resolve()
    if config.journal is not None:
        config.journal = (path.parent / config.journal).resolve()
    if config.state_file is None:
        config.state_file = path.with_name(path.stem + ".state.json")
    config.state_file = (path.parent / config.state_file).resolve()
    return config
