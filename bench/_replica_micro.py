"""replica_bench.py's in-process part: what routing itself costs, with no I/O at all.

A ready model without replicas, a set of 1 replica and a set of 2 (on tests/fakes.py's
FakeRuntime and FakeClock), each asked for a lease and given it back many times; both
the fast path's calls (`lease_now` + `release`) and the `async with lease()` the
aiohttp path takes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from supervisor.lifecycle.effects import Effects  # noqa: E402
from supervisor.lifecycle.registry import Model, Registry, build_model  # noqa: E402
from supervisor.observe.metrics import Metrics  # noqa: E402
from supervisor.rules.table import State  # noqa: E402
from tests.fakes import FakeClock, FakeRuntime, model_config, until  # noqa: E402

N_NOW, N_ASYNC = 200_000, 50_000


def _settings(n: int | None) -> dict[str, Any]:
    if n is None:
        return {"service": "plain", "upstream": "http://127.0.0.1:1"}
    return {"replicas": [{"service": f"r{i}", "upstream": f"http://127.0.0.1:{i + 2}"}
                         for i in range(n)], "min_replicas": n, "target_concurrency": 10**6}


async def _ready(n: int | None) -> Model:
    runtime, clock = FakeRuntime(), FakeClock()
    effects = Effects(runtime, cast(aiohttp.ClientSession, None), clock, probe=runtime.probe)
    model = build_model("m", model_config(_settings(n)), effects,
                        Metrics(snapshots=lambda: []))
    for unit in Registry([model]).units():
        runtime.health_urls[unit.profile.service] = unit.profile.health_url
        runtime.run(unit.profile.service)
        unit.adopt({unit.profile.service})
    await until(lambda: all(u.state is State.READY for u in Registry([model]).units()))
    return model


async def _costs() -> dict[str, float]:
    out: dict[str, float] = {}
    for label, n in (("model without replicas", None), ("1 replica", 1), ("2 replicas", 2)):
        model = await _ready(n)
        began = time.perf_counter()
        for _ in range(N_NOW):
            lease = model.lease_now(None, None)
            assert lease is not None
            model.release(lease)
        out[f"{label}: lease_now + release"] = (time.perf_counter() - began) / N_NOW * 1e6
        began = time.perf_counter()
        for _ in range(N_ASYNC):
            async with model.lease(None):
                pass
        out[f"{label}: async with lease()"] = (time.perf_counter() - began) / N_ASYNC * 1e6
        await model.close()
    return out


def lease_costs() -> dict[str, float]:
    return asyncio.run(_costs())
