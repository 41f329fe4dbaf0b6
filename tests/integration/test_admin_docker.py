"""The admin API against real Compose stand-ins: each toggle's effect is observed on
the containers and through the proxy."""

from __future__ import annotations

import asyncio
import hmac

import pytest

from supervisor.rules.table import State
from tests.helpers import metric_value, scrape

from .conftest import chat, container_running, starts, wait_for

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", TOKEN)


async def admin(http, sup, method: str, path: str, body=None, headers=AUTH):
    async with http.request(method, sup.admin + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def post_chat(http, sup, model: str, **extra):
    async with http.post(sup.url + "/v1/chat/completions", json=chat(model, **extra)) as r:
        return r.status, dict(r.headers), await r.json()


async def test_token_is_required_and_no_hint_is_given(supervisor_factory, http, caplog) -> None:
    caplog.set_level("DEBUG")
    sup = await supervisor_factory({"chat-fast": {}})
    no_token = await admin(http, sup, "GET", "/admin/models", headers={})
    wrong = await admin(http, sup, "GET", "/admin/models",
                        headers={"Authorization": "Bearer nope"})
    not_bearer = await admin(http, sup, "GET", "/admin/models",
                             headers={"Authorization": TOKEN})
    assert no_token == wrong == not_bearer
    assert no_token[0] == 401 and TOKEN not in str(no_token)
    status, body = await admin(http, sup, "GET", "/admin/models")
    assert status == 200 and [m["name"] for m in body["models"]] == ["chat-fast"]
    for probe in ("/healthz", "/readyz"):  # without auth, on both listeners
        for base in (sup.admin, sup.url):
            async with http.get(base + probe) as r:
                assert r.status == 200, probe
    assert TOKEN not in caplog.text


async def test_the_admin_token_is_compared_in_constant_time(
    supervisor_factory, http, monkeypatch
) -> None:
    """hmac.compare_digest decides, over fixed-length digests: a plain `==` (which returns
    at the first differing byte) or a comparison of the raw tokens fails this test."""
    sup = await supervisor_factory({"chat-fast": {}})
    real = hmac.compare_digest
    compared: list[tuple[int, int]] = []
    verdict: list[bool] = []  # empty: the real comparison; else the answer forced

    def spy(a, b) -> bool:
        compared.append((len(a), len(b)))
        return verdict[0] if verdict else real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    wrong_short = {"Authorization": "Bearer x"}
    wrong_long = {"Authorization": "Bearer " + TOKEN * 10}
    assert (await admin(http, sup, "GET", "/admin/models"))[0] == 200
    assert (await admin(http, sup, "GET", "/admin/models", headers=wrong_short))[0] == 401
    assert (await admin(http, sup, "GET", "/admin/models", headers=wrong_long))[0] == 401
    assert len(compared) >= 3
    assert set(compared) == {(32, 32)}  # SHA-256 digests: the token's length does not show
    verdict.append(True)  # compare_digest says "equal": a wrong token is let in...
    assert (await admin(http, sup, "GET", "/admin/models", headers=wrong_short))[0] == 200
    verdict[0] = False  # ...and says "different": the right one is refused
    assert (await admin(http, sup, "GET", "/admin/models"))[0] == 401


async def test_model_status_fields(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    assert (await post_chat(http, sup, "chat-fast"))[0] == 200
    status, model = await admin(http, sup, "GET", "/admin/models/chat-fast")
    assert status == 200
    assert model["state"] == "ready" and model["profile"] == "default"
    assert model["pinned"] is False and model["idle_timeout"] == 600
    assert model["in_flight"] == 0 and model["held"] == 0
    assert model["last_cold_start_seconds"] > 0 and model["last_error"] is None
    # The stand-ins use no GPU: no VRAM where NVML reads a GPU, unknown where it cannot.
    gpu = await scrape(http, sup)
    assert model["vram_bytes"] == (0 if metric_value(gpu, "supervisor_gpu_available") else None)
    assert (await admin(http, sup, "GET", "/admin/models/nope"))[0] == 404


async def test_pinned_model_survives_its_idle_timeout_until_unpinned(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {"idle_timeout": "1s"}})
    status, model = await admin(http, sup, "PUT", "/admin/models/chat-fast/pin",
                                {"pinned": True})
    assert status == 200 and model["pinned"]
    assert (await post_chat(http, sup, "chat-fast"))[0] == 200

    async def idle_for() -> float:
        return (await admin(http, sup, "GET", "/admin/models/chat-fast"))[1]["idle_seconds"]

    async def long_idle() -> bool:
        return await idle_for() > 2.5

    await wait_for(long_idle, 10, "2.5 s idle, well past the 1 s idle timeout")
    assert sup.handle("chat-fast").state is State.READY
    assert container_running(project, "chat-fast")
    await admin(http, sup, "PUT", "/admin/models/chat-fast/pin", {"pinned": False})
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "the idle stop")


async def test_stopped_by_admin_cold_starts_on_the_next_request(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    status, model = await admin(http, sup, "POST", "/admin/models/chat-fast/start")
    assert status == 202 and model["state"] == "starting"
    await wait_for(lambda: sup.handle("chat-fast").state is State.READY, 15, "admin start")
    assert (await admin(http, sup, "POST", "/admin/models/chat-fast/stop"))[0] == 202
    await wait_for(lambda: sup.handle("chat-fast").state is State.STOPPED, 15, "admin stop")
    assert not container_running(project, "chat-fast")
    status, headers, _ = await post_chat(http, sup, "chat-fast")
    assert status == 200 and headers["X-Supervisor-Cold-Start"] == "true"
    assert starts(project, "chat-fast") == 2


async def test_stop_drains_a_stream_in_flight(supervisor_factory, project, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    body = chat("chat-fast", stream=True, max_tokens=6, stream_delay=0.3)
    async with http.post(sup.url + "/v1/chat/completions", json=body) as stream:
        assert stream.status == 200
        await stream.content.readline()
        status, model = await admin(http, sup, "POST", "/admin/models/chat-fast/stop")
        assert (status, model["state"]) == (202, "draining")
        text = (await stream.read()).decode()
    assert text.count("tok") == 5 and "[DONE]" in text  # the first line was read above
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "the stop")


async def test_force_stop_fails_in_flight_with_a_clear_503(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    assert (await post_chat(http, sup, "chat-fast"))[0] == 200
    # The stand-in would answer after 120 s; the forced stop answers it at once.
    slow = asyncio.create_task(post_chat(http, sup, "chat-fast", delay=120))
    handle = sup.handle("chat-fast")
    await wait_for(lambda: handle.in_flight == 1, 5, "the slow request in flight")
    status, _ = await admin(http, sup, "POST", "/admin/models/chat-fast/stop", {"force": True})
    assert status == 202
    # Docker gets its time; the stand-in's 120 s never pass.
    status, _, body = await asyncio.wait_for(slow, 60)
    assert status == 503 and body["error"]["code"] == "model_stopped"
    assert "stopped by an operator" in body["error"]["message"]
    await wait_for(lambda: handle.state is State.STOPPED, 15, "the forced stop")


async def test_sleep_then_a_request_wakes_it_before_forwarding(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"sleeper": {}, "chat-fast": {}})
    assert (await post_chat(http, sup, "sleeper"))[0] == 200
    status, _ = await admin(http, sup, "POST", "/admin/models/sleeper/sleep")
    assert status == 202
    handle = sup.handle("sleeper")
    await wait_for(lambda: handle.state is State.ASLEEP, 10, "asleep")
    async with http.get("http://127.0.0.1:19107/is_sleeping") as r:
        assert (await r.json())["is_sleeping"] is True
    status, headers, _ = await post_chat(http, sup, "sleeper")
    assert status == 200  # the stand-in answers 503 to anything sent while asleep
    assert float(headers["X-Supervisor-Hold-Seconds"]) >= 1.0  # it waited for the wake-up
    async with http.get("http://127.0.0.1:19107/standin/stats") as r:
        stats = (await r.json())["requests"]
    assert stats["POST /v1/chat/completions"] == 2
    assert stats["POST /wake_up"] == 1
    assert starts(project, "sleeper") == 1  # woken, not restarted
    # Admin wake, and a clear 409 for a model without sleep mode.
    await admin(http, sup, "POST", "/admin/models/sleeper/sleep")
    await wait_for(lambda: handle.state is State.ASLEEP, 10, "asleep again")
    assert (await admin(http, sup, "POST", "/admin/models/sleeper/wake"))[0] == 202
    await wait_for(lambda: handle.state is State.READY, 10, "awake")
    status, body = await admin(http, sup, "POST", "/admin/models/chat-fast/sleep")
    assert status == 409 and "sleep" in body["error"]["message"]


async def test_idle_timeout_toggle_stops_the_model(supervisor_factory, project, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    assert (await post_chat(http, sup, "chat-fast"))[0] == 200
    status, model = await admin(http, sup, "PUT", "/admin/models/chat-fast/idle-timeout",
                                {"seconds": 0.5})
    assert status == 200 and model["idle_timeout"] == 0.5
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "the idle stop")
    bad = await admin(http, sup, "PUT", "/admin/models/chat-fast/idle-timeout",
                      {"seconds": -1})
    assert bad[0] == 400


async def test_profile_swap_by_admin_loses_no_request(supervisor_factory, project, http) -> None:
    sup = await supervisor_factory({"ctx": {}})
    ask = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    assert (await post_chat(http, sup, "ctx", **ask))[0] == 200
    status, _ = await admin(http, sup, "PUT", "/admin/models/ctx/profile", {"profile": "long"})
    assert status == 202
    results = await asyncio.gather(*(post_chat(http, sup, "ctx", **ask) for _ in range(10)))
    assert [s for s, _, _ in results] == [200] * 10
    assert all(h["X-Supervisor-Profile"] == "long" for _, h, _ in results)
    assert container_running(project, "long-ctx") and not container_running(project, "short-ctx")
    assert (await admin(http, sup, "PUT", "/admin/models/ctx/profile",
                        {"profile": "huge"}))[0] == 400


async def test_drain_answers_503_and_lets_in_flight_finish(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}}, drain_retry_after="7s")
    assert (await post_chat(http, sup, "chat-fast"))[0] == 200
    slow = asyncio.create_task(post_chat(http, sup, "chat-fast", delay=1))
    await wait_for(lambda: sup.handle("chat-fast").in_flight == 1, 5, "one in flight")
    status, body = await admin(http, sup, "POST", "/admin/drain")
    assert (status, body) == (200, {"draining": True, "in_flight": 1})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "7"
        assert (await r.json())["error"]["code"] == "maintenance"
    assert (await slow)[0] == 200
    await admin(http, sup, "POST", "/admin/undrain")
    assert (await post_chat(http, sup, "chat-fast"))[0] == 200
