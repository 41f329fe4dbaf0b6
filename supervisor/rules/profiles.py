"""Which profile serves a request: pure rules, no I/O and no clock.

A model's profiles are alternative Compose services of the same model on the
same GPUs (e.g. 64K context with 2 sequences, or 128K with 1). Only one runs
at a time. A request goes to the running profile when it fits there; a
request that does not fit triggers a swap to the smallest profile that holds
it, never more often than once per `min_residency`; nothing swaps back down
except through an idle stop, after which the default profile starts again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from supervisor.config import ModelConfig


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    service: str
    upstream: str
    health_url: str
    max_model_len: int | None  # None: unknown, treated as able to hold anything
    default: bool

    def fits(self, tokens: int | None) -> bool:
        return tokens is None or self.max_model_len is None or tokens <= self.max_model_len

    def at(self, host: str) -> Profile:
        """This profile served by `host` (the node a Swarm task runs on) instead of the
        configured upstream's host; scheme, port and path stay as configured."""
        return replace(self, upstream=with_host(self.upstream, host),
                       health_url=with_host(self.health_url, host))


def with_host(url: str, host: str) -> str:
    """`url` with its host replaced (an IPv6 address gets its brackets)."""
    parts = urlsplit(url)
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def profiles_of(model: ModelConfig) -> list[Profile]:
    """The model's profiles, smallest context first (unknown sizes last)."""
    profiles = []
    for name, p in model.profiles.items():
        upstream = p.upstream or model.upstream
        assert upstream is not None  # the config's validator guarantees one
        default = name == model.default_profile
        health = p.health or model.health
        profiles.append(
            Profile(name, p.service, upstream, upstream + health, p.max_model_len, default)
        )
    return sorted(profiles, key=lambda p: (p.max_model_len is None, p.max_model_len or 0))


def idle_timeout(model: ModelConfig, profile: Profile) -> float:
    """How long `profile` may sit idle: `long_idle_timeout` gives a larger profile's GPUs
    back sooner."""
    if profile.default or model.long_idle_timeout is None:
        return model.idle_timeout
    return model.long_idle_timeout


def largest(profiles: list[Profile]) -> Profile:
    return profiles[-1]


def smallest_fitting(profiles: list[Profile], tokens: int | None) -> Profile | None:
    return next((p for p in profiles if p.fits(tokens)), None)


def profile_to_start(profiles: list[Profile], tokens: int | None) -> Profile | None:
    """For a cold start: the default profile when it fits, else the smallest that does."""
    default = next(p for p in profiles if p.default)
    return default if default.fits(tokens) else smallest_fitting(profiles, tokens)


class ProfileDecision(StrEnum):
    SERVE = "serve"  # the running profile holds it
    SWAP = "swap"  # swap now to the target profile
    WAIT = "wait"  # a swap is due but min_residency has not passed: hold, retry later


@dataclass(frozen=True, slots=True)
class Route:
    decision: ProfileDecision
    target: Profile
    wait_seconds: float = 0.0


def route_on_running(
    profiles: list[Profile],
    running: Profile,
    tokens: int | None,
    since_last_swap: float | None,
    min_residency: float,
) -> Route | None:
    """Where a request goes while `running` serves; None when no profile can hold it."""
    if running.fits(tokens):
        return Route(ProfileDecision.SERVE, running)
    target = smallest_fitting(profiles, tokens)
    if target is None:
        return None
    if since_last_swap is not None and since_last_swap < min_residency:
        return Route(ProfileDecision.WAIT, target, min_residency - since_last_swap)
    return Route(ProfileDecision.SWAP, target)


def max_audio_seconds(profile: Profile, reserved_tokens: int, tokens_per_second: float) -> float:
    """Seed 000's rule: (max_model_len - reserved) / tokens per audio second."""
    if profile.max_model_len is None:
        return float("inf")
    return max(0.0, (profile.max_model_len - reserved_tokens) / tokens_per_second)
