"""The sections of the configuration beside the models: Compose, Swarm, profiles, warm-up,
sleep, liveness, replicas, admin, HTTP, client keys, schedules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from supervisor.config.values import (
    ByteSize,
    Cron,
    Duration,
    GpuIndices,
    ListenAddress,
    PositiveByteSize,
    PositiveDuration,
    UpstreamUrl,
)


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
    # Asleep at level 1 this long: to level 2 (weights dropped from host RAM, the process
    # and its compiled graphs kept; a wake reloads the weights). None: stays at level 1.
    deepen_after: Duration | None = None
    # Host RAM a level-1 sleeper holds (its weights), for the host RAM budget. None: the
    # profile's GPU need (declared or measured) where placement knows it.
    host_bytes: ByteSize | None = None

    @model_validator(mode="after")
    def _after_needs_enabled(self) -> SleepConfig:
        for key in ("after", "deepen_after"):
            if getattr(self, key) is not None and not self.enabled:
                raise ValueError(f"{key}: needs `enabled: true` (vLLM with "
                                 "VLLM_SERVER_DEV_MODE=1)")
        if self.deepen_after is not None and self.level != 1:
            raise ValueError("deepen_after: only a level-1 sleep goes deeper (level is 2)")
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
