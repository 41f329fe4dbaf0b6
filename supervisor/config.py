"""The supervisor's configuration: one pydantic model, validated once at start.

The YAML file is the base; any key can be overridden by a `SUPERVISOR_`
environment variable (nested keys joined by `__`, e.g.
`SUPERVISOR_MODELS__CHAT__IDLE_TIMEOUT=5m`), so a container can tweak a
deployment without editing the file.
"""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from supervisor.clients.config import ClientConfig, ClientName, clients_problem
from supervisor.replicas_config import replica_defaults, replicas_problem, scalable_problem

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `90s`, `10m`, `1h`, `1h30m`, `250ms` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(
                    f"invalid duration {value!r}: use e.g. 90s, 10m, 1h or 1h30m"
                ) from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 90s, 10m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]

_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
_UNIT_BYTES = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_bytes(value: object) -> int:
    """Bytes from `24GiB`, `512MiB`, `3.1GB`, `1.5TB` or a bare number of bytes.

    GB/MB are decimal and GiB/MiB binary, as nvidia-smi's MiB and a vendor's "GB"
    differ by 7 %; a bare `24G` is refused rather than guessed.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 24GiB, 512MiB or 3.1GB")
    if isinstance(value, int | float):
        amount, unit = float(value), ""
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None or match.group(2) not in _UNIT_BYTES:
            raise ValueError(
                f"invalid size {value!r}: use e.g. 24GiB, 512MiB, 3.1GB, 1.5TB or bytes"
            )
        amount, unit = float(match.group(1)), match.group(2)
    else:
        raise ValueError("expected a size such as 24GiB, 512MiB or 3.1GB")
    if amount < 0:
        raise ValueError(f"a size cannot be negative: {value!r}")
    return round(amount * _UNIT_BYTES[unit])


def _unique_gpus(value: list[int]) -> list[int]:
    if len(set(value)) != len(value):
        raise ValueError(f"a GPU is named twice in {value}")
    return value


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
PositiveByteSize = Annotated[int, BeforeValidator(parse_bytes), Field(gt=0)]
GpuIndices = Annotated[list[Annotated[int, Field(ge=0)]], AfterValidator(_unique_gpus)]


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    return value.rstrip("/")


def host_port(listen: str) -> tuple[str, int]:
    """('127.0.0.1', 8080) from '127.0.0.1:8080'; ('::1', 8080) from '[::1]:8080'."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _check_listen(value: str) -> str:
    host_port(value)
    return value


def _check_cron(value: object) -> str:
    from apscheduler.triggers.cron import CronTrigger  # slow import, only with schedules

    if not isinstance(value, str):
        raise ValueError("expected a cron expression such as '45 8 * * mon-fri'")
    try:
        CronTrigger.from_crontab(value, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
    return value


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use e.g. UTC or Europe/Berlin)") from None
    return value


UpstreamUrl = Annotated[str, BeforeValidator(str), BeforeValidator(_check_url)]
ListenAddress = Annotated[str, BeforeValidator(_check_listen)]
Cron = Annotated[str, BeforeValidator(_check_cron)]
TimeZone = Annotated[str, BeforeValidator(_check_timezone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComposeConfig(_Strict):
    file: Path
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    env_file: Path | None = None  # passed to `docker compose --env-file` for ${VAR}s
    # The Compose v2 CLI: the Docker CLI plugin, or the standalone `docker-compose` binary.
    command: list[str] = Field(default=["docker", "compose"], min_length=1)


class SwarmConfig(_Strict):
    """`runtime: swarm`: each model's `service` is a service of `stack` (as named in the stack
    file), deployed by the operator with `docker stack deploy -c FILE STACK`. Swarm places
    its tasks (constraints, node labels, generic resources); the supervisor only scales
    them and routes to the node each task runs on."""

    # The manager's Docker API (unix:///var/run/docker.sock, tcp://manager:2376); default:
    # DOCKER_HOST (with DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), else the local socket.
    host: str | None = None
    stack: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    # Swarm emits no task events: between node and service events, tasks are listed this
    # often to notice a task that failed or moved to another node.
    poll_interval: Annotated[Duration, Field(gt=0)] = 1.0
    # A start fails (held requests get 503) once Swarm has found no node for its task for
    # this long: its node is down, or no node has the GPUs (generic resources) free.
    unplaceable_timeout: Duration = 30.0


class ProfileConfig(_Strict):
    """One way to run a model: its Compose service and the context it can hold."""

    service: str
    max_model_len: int | None = Field(None, gt=0)
    upstream: UpstreamUrl | None = None  # default: the model's
    health: str | None = Field(None, pattern=r"^/")  # default: the model's
    # GPU placement (see supervisor/gpus/needs.py). gpus: host GPU indices, overriding what
    # the Compose service reserves ([]: uses no GPU); vram: memory needed on each of them.
    gpus: GpuIndices | None = None  # default: the model's, else from the Compose service
    vram: PositiveByteSize | None = None  # default: the model's, else estimated
    # Read the weights into the page cache as a start begins (anatomy/prefetch.py).
    prefetch: bool | None = None  # default: the model's


class WarmupConfig(_Strict):
    """A request sent after every start and wake, before (or beside) the held ones: the
    first user should not pay the server's warm-up (seed 002: 10.1 s, then 9.2, 8.3)."""

    path: str = Field("/v1/chat/completions", pattern=r"^/")
    # A JSON body; for /v1/audio/transcriptions `{audio_seconds: 1, model: ...}` sends a
    # multipart form with a generated silent WAV of that length and the other fields.
    body: dict[str, Any]
    before_release: bool = True  # False: held requests go at once, the warm-up beside them
    timeout: Duration = 120.0


class SleepConfig(_Strict):
    """vLLM sleep mode (the server runs with VLLM_SERVER_DEV_MODE=1 and --enable-sleep-mode)."""

    enabled: bool = False
    level: int = Field(1, ge=1, le=2)  # 1: weights to CPU RAM; 2: weights dropped
    timeout: Duration = 300.0  # for one /sleep or /wake_up call
    # Tier 1 of the idle policy: asleep after this long without a request (idle_timeout,
    # tier 2, still stops it). None: only an operator puts it to sleep.
    after: Duration | None = None
    # GPU memory a sleeping server keeps on each of its GPUs, for placement, until one
    # has been measured. None: until measured, sleeping is assumed to free nothing.
    vram: ByteSize | None = None

    @model_validator(mode="after")
    def _after_needs_enabled(self) -> SleepConfig:
        if self.after is not None and not self.enabled:
            raise ValueError("after: needs `enabled: true` (vLLM with VLLM_SERVER_DEV_MODE=1)")
        return self


class LivenessConfig(_Strict):
    """While a model is ready or asleep its health path is probed: a server that stops
    answering (hung, not exited) is restarted instead of swallowing requests."""

    interval: Duration = 10.0  # 0: no liveness probes
    timeout: Duration = 5.0
    failures: int = Field(3, ge=1)  # misses in a row that make it dead


class ReplicaConfig(_Strict):
    """One replica of a model: its own server (Compose service, upstream, GPUs). A model
    with several profiles names the replica's service for each in `profiles`."""

    service: str | None = None
    profiles: dict[str, str] = {}  # profile name -> this replica's service for it
    upstream: UpstreamUrl
    gpus: GpuIndices | None = None  # default: the model's (or its profile's)
    vram: PositiveByteSize | None = None


class ScalableReplicas(_Strict):
    """`replicas: {min, max}`: one service scaled by a runtime that can scale (Swarm)."""

    min: int = Field(0, ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ScalableReplicas:
        if self.min > self.max:
            raise ValueError(f"min: {self.min} is more than max ({self.max})")
        return self


class ModelConfig(_Strict):
    # Either one Compose `service` (an implicit profile named "default") or `profiles`.
    service: str | None = None
    profiles: dict[str, ProfileConfig] = {}
    default_profile: str | None = None
    upstream: UpstreamUrl | None = None
    aliases: list[str] = []
    # The name the server itself serves (vLLM's --served-model-name); requests that name
    # the model by its key or an alias are rewritten to it. Default: the model's key.
    served_model_name: str | None = None
    health: str = Field("/health", pattern=r"^/")
    # Which phase table reads its log during a start (anatomy/phases.py); any other name:
    # only the phases the supervisor sees itself.
    server: str = Field("vllm", pattern=r"^[a-z0-9_-]+$")
    startup_timeout: Duration = 900.0
    idle_timeout: Duration = 600.0
    # `adaptive`: when to sleep and stop is learned from the model's idle gaps (between
    # min_idle and idle_timeout), and it is started again ahead of demand that repeats
    # (supervisor/idle/). `prefer` weighs the seconds users wait against GPU time held.
    idle_policy: Literal["fixed", "adaptive"] = "fixed"
    min_idle: Duration = 0.0
    prefer: Literal["latency", "balanced", "savings"] = "balanced"
    long_idle_timeout: Duration | None = None  # for every profile but the default one
    min_residency: Duration = 60.0  # no profile swap sooner than this after the last one
    stop_timeout: Duration = 30.0
    # Failed starts are retried no sooner than 1 s, 2 s, 4 s ... after the last, up to this;
    # meanwhile requests get 503 with Retry-After instead of hammering Docker.
    restart_backoff_max: Duration = 300.0
    liveness: LivenessConfig = LivenessConfig.model_validate({})
    warmup: WarmupConfig | None = None
    # A held `"stream": true` request gets 200 + text/event-stream after this long, then an
    # SSE comment every `loading_progress_every` until the model's own stream follows.
    loading_progress: bool = False
    loading_progress_after: Duration = 2.0
    loading_progress_every: Duration = 5.0
    max_held: int = Field(256, ge=0)
    hold_timeout: Duration = 1200.0
    health_interval: Duration = 0.1
    # What a request needs, for choosing a profile (see supervisor/estimate.py).
    model_dir: Path | None = None
    prefetch: bool = False  # for every profile that says nothing (anatomy/prefetch.py)
    tokens_per_audio_second: float = Field(12.5, gt=0)
    reserved_tokens: int = Field(0, ge=0)
    default_output_tokens: int = Field(256, ge=0)
    sleep: SleepConfig = SleepConfig.model_validate({})
    gpus: GpuIndices | None = None  # for every profile that names none
    vram: PositiveByteSize | None = None  # for every profile that names none
    # The key the backend expects (vLLM --api-key), sent as `Authorization: Bearer`.
    upstream_key_env: str | None = None  # the name of an environment variable
    upstream_key_file: Path | None = None
    # Several servers of the model (see lifecycle/units.py): a list of replicas, or
    # {min, max} on a runtime that scales one service. Requests go to the ready replica
    # with the fewest outstanding; another starts when held + in flight per ready (or
    # starting) replica exceeds `target_concurrency` (e.g. vLLM's max_num_seqs).
    replicas: list[ReplicaConfig] | ScalableReplicas | None = None
    target_concurrency: int | None = Field(None, ge=1)
    min_replicas: int = Field(0, ge=0)  # kept running (as if pinned) even when idle

    @model_validator(mode="before")
    @classmethod
    def _services_from_replicas(cls, data: Any) -> Any:
        """With a replica list, the model's own profiles are the first replica's."""
        return replica_defaults(data)

    @model_validator(mode="after")
    def _profiles(self) -> ModelConfig:
        if self.service is not None:
            if self.profiles:
                raise ValueError("service: give either `service` or `profiles`, not both")
            self.profiles = {"default": ProfileConfig.model_validate({"service": self.service})}
        if not self.profiles:
            raise ValueError("service: required (or `profiles`)")
        if self.default_profile is None:
            if len(self.profiles) > 1:
                raise ValueError("default_profile: required when a model has several profiles")
            self.default_profile = next(iter(self.profiles))
        elif self.default_profile not in self.profiles:
            raise ValueError(
                f"default_profile: {self.default_profile!r} is not one of its profiles "
                f"({', '.join(self.profiles)})"
            )
        problem = replicas_problem(self) or idle_bounds_problem(self)
        if problem:
            raise ValueError(problem)
        for name, profile in self.profiles.items():
            if profile.upstream is None and self.upstream is None:
                raise ValueError(
                    f"profiles.{name}.upstream: required, as the model declares no `upstream`"
                )
        return self


class AdminConfig(_Strict):
    listen: ListenAddress = "127.0.0.1:8081"
    # The bearer token: this environment variable, else the file named by <token_env>_FILE,
    # else `token_file`. Without one, admin may only listen on a loopback address.
    token_env: str = "SUPERVISOR_ADMIN_TOKEN"
    token_file: Path | None = None


class HttpConfig(_Strict):
    """The proxy listener's limits and timeouts; the defaults are nginx's, the bar users
    know. Past a limit the proxy answers 414 / 431 / 400 itself and closes."""

    header_timeout: PositiveDuration = 60.0  # a request's whole head (slow heads: slowloris)
    body_timeout: PositiveDuration = 60.0  # a gap while reading a body
    keepalive_timeout: PositiveDuration = 75.0  # a connection idle between requests
    # A gap between two reads from a model server (never a total: generations run long).
    upstream_read_timeout: PositiveDuration = 600.0
    websocket_idle_timeout: PositiveDuration = 600.0  # no byte either way on a WebSocket
    # After an early answer (404, 401, 413 ... before the body was read): the rest of the
    # body is read and dropped, up to max_discard bytes with body_timeout gaps, keeping
    # the connection; past that it is closed, lingering (reading and dropping what still
    # comes, gaps of lingering_timeout, lingering_time at most) so the answer is not lost.
    max_discard: Annotated[ByteSize, Field(ge=0)] = 1 << 20
    lingering_time: PositiveDuration = 30.0
    lingering_timeout: PositiveDuration = 5.0
    max_request_line: Annotated[ByteSize, Field(ge=256)] = 8192
    max_header_size: Annotated[ByteSize, Field(ge=256)] = 8192  # one field line
    max_headers: Annotated[int, Field(ge=8)] = 128
    max_head_size: Annotated[ByteSize, Field(ge=1024)] = 65536


class ClientAuthConfig(_Strict):
    """API keys the proxy accepts (`Authorization: Bearer`); none configured: no check."""

    keys: list[str] = []
    keys_file: Path | None = None  # one key per line; '#' starts a comment


class ScheduleConfig(_Strict):
    """Keep a model warm: started and pinned from `start` until `end` (crontab lines)."""

    model: str
    start: Cron
    end: Cron
    profile: str | None = None


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
    # Request bodies held in memory at once (JSON bodies up to 1 MiB; larger ones go to
    # TMPDIR and hold 2 MiB each). Past it, new bodies wait, then get 503 (proxy/budget.py).
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



def idle_bounds_problem(model: ModelConfig) -> str | None:
    """'key: reason' when the adaptive idle policy's bounds cannot hold: it chooses when
    to stop between `min_idle` and `idle_timeout` (`long_idle_timeout` for the larger
    profiles)."""
    if model.idle_policy == "adaptive" and model.idle_timeout <= 0:
        return "idle_timeout: idle_policy adaptive needs one above 0 (its upper bound)"
    for key, bound in (("idle_timeout", model.idle_timeout),
                       ("long_idle_timeout", model.long_idle_timeout)):
        if bound is not None and model.min_idle > bound:
            return (f"min_idle: {model.min_idle:g} s is above {key} ({bound:g} s); it is "
                    "the lower bound of the idle time")
    return None


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
