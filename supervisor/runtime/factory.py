"""The runtime a config asks for (`runtime: compose | swarm`)."""

from __future__ import annotations

from supervisor.config import Config
from supervisor.runtime.base import Runtime
from supervisor.runtime.compose import ComposeRuntime
from supervisor.runtime.swarm import SwarmRuntime


def runtime_for(config: Config) -> Runtime:
    if config.runtime == "swarm":
        assert config.swarm is not None  # the config's validator makes sure
        return SwarmRuntime(config.swarm)
    assert config.compose is not None
    return ComposeRuntime(config.compose)
