"""Named clients on real Compose stand-ins, through the official `openai` client: a model
outside a key's scope, a limit and its Retry-After, the models a key sees, and a reload
that changes a client without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest

from supervisor.rules.table import State
from tests.helpers import Supervisor, metric_value, scrape

from .conftest import wait_for
from .test_admin_config_docker import admin, from_file, write_config

__all__ = ["from_file"]


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", "t0ken-for-config-tests")
    monkeypatch.setenv("ALICE_KEY", "sk-alice")
    (tmp_path / "bot.keys").write_text("sk-bot\n")


def client(sup: Supervisor, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=0)


async def say(sup: Supervisor, key: str, model: str, **extra: object) -> str:
    answer = await client(sup, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], **extra)  # type: ignore[call-overload]
    return str(answer.model)


CLIENTS = {
    "alice": {"key_env": "ALICE_KEY", "models": ["chat-fast"], "priority": 1},
    "bot": {"key_file": "bot.keys", "requests_per_minute": 30, "max_concurrent": 2},
}


async def test_scope_limits_and_the_models_a_key_sees(tmp_path, project, from_file, http,
                                                      caplog) -> None:
    caplog.set_level("DEBUG")
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}, "chat-slow": {}},
                        client_auth={"keys": ["sk-plain"]}, clients=CLIENTS)
    sup = await from_file(path)
    # Outside the scope: 403 in OpenAI's shape, and nothing starts for it.
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await say(sup, "sk-alice", "chat-slow")
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"
    assert sup.handle("chat-slow").state is State.STOPPED
    with pytest.raises(openai.AuthenticationError):
        await say(sup, "sk-nobody", "chat-fast")
    await say(sup, "sk-alice", "chat-fast")  # held through a cold start (the aiohttp path)
    assert [m.id async for m in client(sup, "sk-alice").models.list()] == ["chat-fast"]
    assert {m.id async for m in client(sup, "sk-plain").models.list()} == {
        "chat-fast", "chat-slow"}
    with pytest.raises(openai.PermissionDeniedError):
        await client(sup, "sk-alice").models.retrieve("chat-slow")
    # The fast path (a ready model) refuses the same.
    await say(sup, "sk-bot", "chat-slow")
    assert sup.handle("chat-slow").state is State.READY
    fast_before = metric_value(await scrape(http, sup), "supervisor_proxy_requests_total",
                               path="fast")
    with pytest.raises(openai.PermissionDeniedError):
        await say(sup, "sk-alice", "chat-slow")

    # 30 a minute, a minute's worth at once: the bot has used 1 (plus what refilled while it
    # was held: a token every 2 s), so about 29 more pass (on the fast path), then one is
    # refused with a Retry-After, after which it passes.
    began, passed = time.monotonic(), 0
    with pytest.raises(openai.RateLimitError) as limited:
        while passed < 40:
            await say(sup, "sk-bot", "chat-fast")
            passed += 1
    assert 29 <= passed <= 30 + (time.monotonic() - began) / 2
    assert metric_value(await scrape(http, sup), "supervisor_proxy_requests_total",
                        path="fast") >= fast_before + passed
    assert limited.value.code == "rate_limited"
    wait = int(limited.value.response.headers["Retry-After"])
    assert 1 <= wait <= 2
    refused_at = time.monotonic()
    await asyncio.sleep(wait)
    await say(sup, "sk-bot", "chat-fast")
    assert time.monotonic() - refused_at < 60 / 30 + 1  # it did not have to wait longer
    # The plain key and alice were never limited.
    for _ in range(5):
        await say(sup, "sk-plain", "chat-fast")
    for key in ("sk-alice", "sk-bot", "sk-plain", "sk-nobody"):
        assert key not in caplog.text


async def test_max_concurrent_and_a_reload_without_restart(tmp_path, project, from_file,
                                                           http) -> None:
    clients = {**CLIENTS, "bot": {"key_file": "bot.keys", "max_concurrent": 1}}
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}, "chat-slow": {}},
                        clients=clients)
    sup = await from_file(path)
    bot = client(sup, "sk-bot")
    await say(sup, "sk-bot", "chat-fast")  # ready, and the bot's mean duration measured
    stream = await bot.chat.completions.create(
        model="chat-fast", messages=[{"role": "user", "content": "hi"}], stream=True,
        max_tokens=8, extra_body={"stream_delay": 0.4})
    with pytest.raises(openai.RateLimitError) as busy:
        await say(sup, "sk-bot", "chat-fast")
    assert "max_concurrent" in busy.value.message
    assert int(busy.value.response.headers["Retry-After"]) >= 1
    _ = [chunk async for chunk in stream]
    await say(sup, "sk-bot", "chat-fast")  # its slot is free again
    # A reload widens alice's scope: no restart, the same process answers.
    with pytest.raises(openai.PermissionDeniedError):
        await say(sup, "sk-alice", "chat-slow")
    clients["alice"] = {**clients["alice"], "models": ["chat-fast", "chat-slow"]}
    write_config(path, project, {"chat-fast": {}, "chat-slow": {}}, clients=clients)
    status, _ = await admin(http, sup, "POST", "/admin/reload")
    assert status == 200
    await say(sup, "sk-alice", "chat-slow")
    await wait_for(lambda: sup.handle("chat-slow").state is State.READY, 5, "chat-slow")


async def test_usage_per_client_equals_the_servers_usage(tmp_path, project, from_file,
                                                         http) -> None:
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}},
                        client_auth={"keys": ["sk-plain"]}, clients=CLIENTS)
    sup = await from_file(path)
    alice = client(sup, "sk-alice")
    prompt = completion = 0
    for text in ("hello", "a longer prompt of several words", "x " * 40):  # cold, then fast
        answer = await alice.chat.completions.create(
            model="chat-fast", messages=[{"role": "user", "content": text}])
        assert answer.usage is not None
        prompt, completion = (prompt + answer.usage.prompt_tokens,
                              completion + answer.usage.completion_tokens)
    ask = {"model": "chat-fast", "messages": [{"role": "user", "content": "stream me"}],
           "max_tokens": 6}
    plain = [c async for c in await alice.chat.completions.create(**ask, stream=True)]
    assert plain and all(c.usage is None and c.choices for c in plain)  # as it asked
    counted = [c async for c in await alice.chat.completions.create(
        **ask, stream=True, stream_options={"include_usage": True})]
    usage = counted[-1].usage
    assert usage is not None and counted[-1].choices == []
    prompt += 2 * usage.prompt_tokens
    completion += 2 * usage.completion_tokens
    await say(sup, "sk-plain", "chat-fast")

    status, report = await admin(http, sup, "GET", "/admin/usage")
    assert status == 200
    used = report["clients"]["alice"]["models"]["chat-fast"]
    assert (used["requests"], used["prompt_tokens"], used["completion_tokens"]) == (
        5, prompt, completion)
    assert used["held_seconds"] > 0  # the first was held through the cold start
    assert report["clients"]["anonymous"]["total"]["requests"] == 1
    assert report["clients"]["bot"]["models"] == {}
    text = await scrape(http, sup)
    assert metric_value(text, "supervisor_client_prompt_tokens_total", client="alice",
                        model="chat-fast") == prompt
    assert metric_value(text, "supervisor_client_completion_tokens_total", client="alice",
                        model="chat-fast") == completion
