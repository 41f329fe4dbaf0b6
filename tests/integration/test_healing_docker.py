"""Faults a shared GPU box has: a container that dies, bodies that cannot be parsed.
Real Engine, real Compose, stand-in servers."""

from __future__ import annotations

from supervisor.lifecycle.table import State

from .conftest import chat, compose_project, starts, wait_for


async def test_container_killed_while_idle_the_next_request_is_held_through_a_restart(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    compose_project(project).run("kill", "chat-fast")  # SIGKILL: no goodbye
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["choices"][0]["message"]["content"] == "stand-in reply"
        assert r.headers["X-Supervisor-Cold-Start"] == "true"
    assert starts(project, "chat-fast") == 2
    assert sup.handle("chat-fast").state is State.READY


async def test_container_killed_mid_stream_cuts_the_stream_and_the_next_request_is_served(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    stream = chat("chat-fast", stream=True, max_tokens=200, stream_delay=0.05)
    async with http.post(sup.url + "/v1/chat/completions", json=stream) as r:
        assert r.status == 200
        await r.content.readline()  # the stream is under way
        compose_project(project).run("kill", "chat-fast")
        ended = False
        try:
            async for _ in r.content:
                pass
        except Exception:  # a cut stream: the connection closes mid-body
            ended = True
        assert ended or r.content.at_eof()
    await wait_for(lambda: sup.handle("chat-fast").in_flight == 0, 5, "the cut stream to end")
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200, await r.text()


async def test_deeply_nested_json_gets_400_in_the_openai_shape(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    body = b'{"model": "chat-fast", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with http.post(sup.url + "/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    assert sup.handle("chat-fast").state is State.STOPPED  # nothing started for it
