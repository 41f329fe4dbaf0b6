"""The admin API against its own OpenAPI document: every route is documented, and
schemathesis fuzzes every operation on the real running site (real models behind
it): no 5xx, every answer as documented."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from supervisor.ops.admin import ROUTES
from supervisor.rules.table import State

from .conftest import wait_for

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 150  # per generation mode, spread over all operations
# Endless by design (Server-Sent Events): a client that reads whole bodies would wait
# forever. tests/integration/test_events_docker.py covers it.
ENDLESS = {("GET", "/admin/events/stream")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", TOKEN)


async def fetch_spec(http, sup) -> dict[str, Any]:
    async with http.get(sup.admin + "/admin/openapi.json", headers=AUTH) as r:
        assert r.status == 200
        spec: dict[str, Any] = await r.json()
        return spec


async def test_every_admin_route_is_in_the_spec(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}, "ctx": {}})
    spec = await fetch_spec(http, sup)
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops
                  if m != "parameters"}
    served = {(m, p) for m, p, _ in ROUTES}
    assert served == documented
    name = spec["paths"]["/admin/models/{name}"]["parameters"][0]["schema"]
    assert name["enum"] == ["chat-fast", "ctx"]


def fuzz(spec: dict[str, Any], base_url: str) -> set[tuple[str, str, int]]:
    """Returns the (method, path, status) triples seen."""
    schema = schemathesis.openapi.from_dict(spec)
    for method, path in ENDLESS:
        schema = schema.exclude(method=method, path=path)
    seen: set[tuple[str, str, int]] = set()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=base_url, headers=AUTH, timeout=30)
            seen.add((case.method, case.path, response.status_code))
            case.validate_response(response, checks=CHECKS)

        run()
    return seen


async def test_fuzz_the_admin_api_from_its_spec(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}, "sleeper": {}, "ctx": {}})
    spec = await fetch_spec(http, sup)
    seen = await asyncio.to_thread(fuzz, spec, sup.admin)
    assert {(m, p) for m, p, _ in seen} == {(m, p) for m, p, _ in ROUTES} - ENDLESS  # all
    assert {s for _, _, s in seen} >= {200, 202, 400}
    async with http.get(sup.admin + "/healthz") as r:
        assert r.status == 200  # still alive
    await wait_for(lambda: all(sup.handle(n).state in (State.STOPPED, State.READY, State.FAILED,
                                                        State.ASLEEP)
                               for n in ("chat-fast", "sleeper", "ctx")), 30, "quiet models")
