"""One model's settings (`ModelConfig`) and the rules of its `replicas:` key.

A model with a replica list keeps its own profiles (names, context sizes, health path):
they are the first replica's. Every replica names its own server: `service` for a model
with one implicit profile, `profiles: {<profile>: <service>}` for a model with several
(each replica runs each profile as a service of its own, on its own upstream).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from supervisor.config.sections import (
    LivenessConfig,
    ProfileConfig,
    ReplicaConfig,
    ScalableReplicas,
    SleepConfig,
    WarmupConfig,
    _Strict,
)
from supervisor.config.values import (
    Duration,
    GpuIndices,
    PositiveByteSize,
    UpstreamUrl,
)

TARGET_HINT = ("requests outstanding per ready replica above which another starts "
               "(e.g. vLLM's max_num_seqs)")


def replica_defaults(data: Any) -> Any:
    """Raw model settings with the model's service(s) taken from its first replica, so
    that a replica list needs no `service` of the model's own."""
    if not isinstance(data, dict):
        return data
    replicas = data.get("replicas")
    if not isinstance(replicas, list):
        return data
    first = replicas[0] if replicas and isinstance(replicas[0], dict) else {}
    if "upstream" not in data and isinstance(first.get("upstream"), str):
        data = {**data, "upstream": first["upstream"]}
    # A service the replica lacks is left "" here: replicas_problem names the replica's key.
    profiles = data.get("profiles")
    if "service" not in data and not profiles:
        service = first.get("service")
        return {**data, "service": service if isinstance(service, str) else ""}
    named = first.get("profiles")
    named = named if isinstance(named, dict) else {}
    if isinstance(profiles, dict):
        filled = {
            name: {**p, "service": named.get(name, "")}
            if isinstance(p, dict) and "service" not in p else p
            for name, p in profiles.items()
        }
        return {**data, "profiles": filled}
    return data


def replicas_problem(model: ModelConfig) -> str | None:
    """'key: reason' for the first problem of a model's replica settings, else None."""
    replicas = model.replicas
    if replicas is None:
        if model.min_replicas:
            return "min_replicas: needs `replicas`"
        if model.target_concurrency is not None:
            return "target_concurrency: needs `replicas`"
        return None
    if not isinstance(replicas, list):
        if model.min_replicas:
            return "min_replicas: with `replicas: {min, max}` give the minimum as replicas.min"
        return None  # target_concurrency: scalable_problem, once the runtime is known
    if not replicas:
        return "replicas: list at least one replica ({service, upstream})"
    if model.upstream != replicas[0].upstream:
        return "upstream: must be left out with replicas; each replica names its own"
    for name, profile in model.profiles.items():
        if profile.upstream is not None:
            return (f"profiles.{name}.upstream: must be left out with replicas; a replica's "
                    "upstream serves each of its profiles")
    for i, replica in enumerate(replicas):
        problem = _replica_problem(model, replica, i)
        if problem:
            return problem
    for key in ("service", "upstream"):
        values = [_services(model, r) if key == "service" else [r.upstream] for r in replicas]
        seen: dict[str, int] = {}
        for i, names in enumerate(values):
            for name in names:
                if name in seen:
                    return (f"replicas.{i}.{key}: {name!r} is also replicas.{seen[name]}'s; "
                            "each replica is a server of its own")
                seen[name] = i
    if model.min_replicas > len(replicas):
        return f"min_replicas: {model.min_replicas} is more than the {len(replicas)} replicas"
    if len(replicas) > max(model.min_replicas, 1) and model.target_concurrency is None:
        return f"target_concurrency: required with several replicas: {TARGET_HINT}"
    return None


def _replica_problem(model: ModelConfig, replica: ReplicaConfig, i: int) -> str | None:
    first, key = i == 0, f"replicas.{i}"
    if model.service is not None:  # one implicit profile
        if not replica.service or replica.profiles:
            return (f"{key}.service: required (the model has one profile; `profiles` is "
                    "for several)")
        if first and model.service != replica.service:
            return ("service: the model's `service` must be left out with replicas "
                    f"(it names {model.service!r}); each replica names its own")
        return None
    if replica.service is not None:
        return (f"{key}.profiles: the model has profiles, so the replica names a service "
                f"for each ({', '.join(model.profiles)}), e.g. profiles: {{name: service}}")
    missing = [p for p in model.profiles if p not in replica.profiles]
    if missing:
        return f"{key}.profiles: no service for profile(s) {', '.join(missing)}"
    extra = [p for p in replica.profiles if p not in model.profiles]
    if extra:
        return f"{key}.profiles: {', '.join(extra)} is not a profile of the model"
    if first:
        for name, profile in model.profiles.items():
            if profile.service != replica.profiles[name]:
                return (f"profiles.{name}.service: must be left out with replicas; each "
                        "replica names its own")
    return None


def _services(model: ModelConfig, replica: ReplicaConfig) -> list[str]:
    if replica.service is not None:
        return [replica.service]
    return [replica.profiles[p] for p in model.profiles]


def scalable_problem(model: ModelConfig) -> str | None:
    """'key: reason' for `replicas: {min, max}` on a runtime that scales (checked after
    the runtime, so that Compose's refusal comes first)."""
    replicas = model.replicas
    if isinstance(replicas, list) or replicas is None:
        return None
    if replicas.max > max(replicas.min, 1) and model.target_concurrency is None:
        return f"target_concurrency: required with replicas.max above 1: {TARGET_HINT}"
    return None


class ModelConfig(_Strict):
    # Either one Compose `service` (an implicit profile named "default") or `profiles`.
    service: str | None = None
    profiles: dict[str, ProfileConfig] = {}  # noqa: RUF012 (a pydantic field: copied per instance)
    default_profile: str | None = None
    upstream: UpstreamUrl | None = None
    aliases: list[str] = []  # noqa: RUF012
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
    # What a request needs, for choosing a profile (see supervisor/tokens/estimate.py).
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
