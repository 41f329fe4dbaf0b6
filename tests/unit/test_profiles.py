"""Profile choice and the anti-thrash rule, without Docker."""

from __future__ import annotations

import pytest

from supervisor.config import ModelConfig
from supervisor.rules.profiles import (
    ProfileDecision,
    idle_timeout,
    max_audio_seconds,
    profile_to_start,
    profiles_of,
    route_on_running,
    smallest_fitting,
)

STEP_AUDIO = ModelConfig.model_validate(
    {
        "upstream": "http://127.0.0.1:9001",
        "default_profile": "64k",
        "profiles": {
            "long": {"service": "step-audio-long", "max_model_len": 131072},
            "64k": {"service": "step-audio-64k", "max_model_len": 65536},
            "96k": {"service": "step-audio-96k", "max_model_len": 98304},
        },
        "idle_timeout": "10m",
        "long_idle_timeout": "5m",
        "reserved_tokens": 1500,
    }
)
PROFILES = profiles_of(STEP_AUDIO)
BY_NAME = {p.name: p for p in PROFILES}


def test_profiles_are_ordered_smallest_first_with_their_idle_timeouts() -> None:
    assert [p.name for p in PROFILES] == ["64k", "96k", "long"]
    assert BY_NAME["64k"].default and idle_timeout(STEP_AUDIO, BY_NAME["64k"]) == 600
    # long_idle_timeout gives the GPUs back sooner
    assert idle_timeout(STEP_AUDIO, BY_NAME["long"]) == 300
    assert BY_NAME["long"].health_url == "http://127.0.0.1:9001/health"


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(None, "64k"), (1000, "64k"), (65536, "64k"), (65537, "96k"), (100000, "long"),
     (131072, "long"), (131073, None)],
)
def test_cold_start_uses_the_default_profile_when_it_fits(tokens, expected) -> None:
    chosen = profile_to_start(PROFILES, tokens)
    assert (chosen.name if chosen else None) == expected


def test_single_service_model_is_one_unlimited_profile() -> None:
    model = ModelConfig.model_validate({"service": "chat", "upstream": "http://127.0.0.1:1"})
    (only,) = profiles_of(model)
    assert (only.name, only.service, only.max_model_len) == ("default", "chat", None)
    assert only.fits(10**9)


def test_running_profile_serves_what_fits_even_when_larger() -> None:
    route = route_on_running(PROFILES, BY_NAME["long"], 1000, since_last_swap=1, min_residency=60)
    assert route is not None and route.decision is ProfileDecision.SERVE
    assert route.target.name == "long"  # no swap back down for short requests


def test_request_too_long_for_the_running_profile_swaps_to_the_smallest_that_fits() -> None:
    route = route_on_running(PROFILES, BY_NAME["64k"], 90000, since_last_swap=None,
                             min_residency=60)
    assert route is not None and route.decision is ProfileDecision.SWAP
    assert route.target.name == "96k"


def test_no_swap_sooner_than_min_residency_after_the_last_one() -> None:
    route = route_on_running(PROFILES, BY_NAME["64k"], 90000, since_last_swap=45,
                             min_residency=60)
    assert route is not None and route.decision is ProfileDecision.WAIT
    assert route.wait_seconds == pytest.approx(15)
    later = route_on_running(PROFILES, BY_NAME["64k"], 90000, since_last_swap=60,
                             min_residency=60)
    assert later is not None and later.decision is ProfileDecision.SWAP


def test_what_fits_nowhere_has_no_route() -> None:
    assert route_on_running(PROFILES, BY_NAME["64k"], 200000, None, 60) is None
    assert smallest_fitting(PROFILES, 200000) is None


def test_longest_audio_follows_seed_000() -> None:
    # (65536 - 1500) / 12.5 = 5122.9 s: the 85 minutes operators measured.
    assert max_audio_seconds(BY_NAME["64k"], 1500, 12.5) == pytest.approx(5122.88)
    assert max_audio_seconds(BY_NAME["long"], 1500, 12.5) / 60 == pytest.approx(172.76, abs=0.01)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"default_profile": "xl"}, "default_profile: 'xl' is not one of its profiles"),
        ({"default_profile": None}, "default_profile: required when a model has several"),
        ({"service": "x"}, "service: give either `service` or `profiles`, not both"),
        ({"upstream": None}, "profiles.long.upstream: required, as the model declares no"),
    ],
)
def test_profile_config_errors(extra, message) -> None:
    raw = STEP_AUDIO.model_dump(exclude={"service"}) | extra
    with pytest.raises(ValueError, match=message.replace("`", ".")):
        ModelConfig.model_validate(raw)


def test_each_profile_may_declare_its_own_upstream() -> None:
    model = ModelConfig.model_validate({
        "default_profile": "a",
        "profiles": {
            "a": {"service": "a", "upstream": "http://127.0.0.1:1", "max_model_len": 10},
            "b": {"service": "b", "upstream": "http://127.0.0.1:2", "max_model_len": 20},
        },
    })
    assert [p.upstream for p in profiles_of(model)] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
