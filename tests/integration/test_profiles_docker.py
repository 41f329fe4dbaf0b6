"""Context-aware profile swap on real Compose, with stand-ins that enforce their
max length with vLLM's exact error text (short-ctx: 2048, long-ctx: 8192)."""

from __future__ import annotations

import asyncio
import io
import re
import time
import wave

import aiohttp
import pytest

from supervisor.lifecycle.table import State

from .conftest import container_running, starts, wait_for

URL = "/v1/chat/completions"


def ask(words: int, **extra: object) -> dict[str, object]:
    return {"model": "ctx", "messages": [{"role": "user", "content": "word " * words}],
            "max_tokens": 16, **extra}


async def post(http, sup, body) -> tuple[int, dict[str, str], dict]:
    async with http.post(sup.url + URL, json=body) as r:
        return r.status, dict(r.headers), await r.json()


async def test_short_request_uses_the_default_profile(supervisor_factory, project, http) -> None:
    sup = await supervisor_factory({"ctx": {}})
    status, headers, _ = await post(http, sup, ask(100))
    assert status == 200
    assert headers["X-Supervisor-Profile"] == "short"
    assert container_running(project, "short-ctx")
    assert not container_running(project, "long-ctx")


async def test_long_request_swaps_profiles_and_is_answered(supervisor_factory, project, http):
    sup = await supervisor_factory({"ctx": {}})
    assert (await post(http, sup, ask(10)))[0] == 200  # the short profile runs
    status, headers, _ = await post(http, sup, ask(3000))
    assert status == 200
    assert headers["X-Supervisor-Profile"] == "long"
    assert headers["X-Supervisor-Cold-Start"] == "true"
    assert sup.handle("ctx").swaps == 1
    assert container_running(project, "long-ctx")
    assert not container_running(project, "short-ctx")
    # Short requests are now served by the long profile: no swap back.
    status, headers, _ = await post(http, sup, ask(10))
    assert (status, headers["X-Supervisor-Profile"]) == (200, "long")
    async with http.get(sup.url + "/v1/models") as r:
        (entry,) = (await r.json())["data"]
    assert entry["profile"] == "long"
    assert entry["profiles"] == [{"name": "short", "max_model_len": 2048},
                                 {"name": "long", "max_model_len": 8192}]


async def test_short_requests_arriving_during_a_swap_are_all_answered(supervisor_factory, http):
    sup = await supervisor_factory({"ctx": {}})
    assert (await post(http, sup, ask(10)))[0] == 200
    long_one = asyncio.create_task(post(http, sup, ask(3000)))
    handle = sup.handle("ctx")
    await wait_for(lambda: handle.state is not State.READY, 10, "the swap to begin")
    shorts = await asyncio.gather(*(post(http, sup, ask(20)) for _ in range(30)))
    assert [s for s, _, _ in shorts] == [200] * 30
    assert (await long_one)[0] == 200
    assert handle.swaps == 1


async def test_stream_in_flight_on_the_old_profile_finishes_before_the_swap(
    supervisor_factory, http, project
) -> None:
    sup = await supervisor_factory({"ctx": {}})
    body = ask(10, stream=True, max_tokens=10, stream_delay=0.3)  # 3 s of streaming
    async with http.post(sup.url + URL, json=body) as stream:
        assert stream.headers["X-Supervisor-Profile"] == "short"
        first = await stream.content.readline()
        assert first.startswith(b"data: ")
        swap = asyncio.create_task(post(http, sup, ask(3000)))
        await wait_for(lambda: sup.handle("ctx").state is State.DRAINING, 5, "draining")
        rest = await stream.read()
        stream_ended = time.monotonic()
    assert rest.count(b"data: ") == 10  # 9 more chunks and [DONE]: nothing was cut
    assert rest.rstrip().endswith(b"data: [DONE]")
    status, headers, _ = await swap
    assert (status, headers["X-Supervisor-Profile"]) == (200, "long")
    assert float(headers["X-Supervisor-Hold-Seconds"]) > 0
    assert time.monotonic() > stream_ended
    assert starts(project, "short-ctx") == 1 and starts(project, "long-ctx") == 1


async def test_what_fits_no_profile_is_refused_before_anything_starts(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"ctx": {}})
    status, _, body = await post(http, sup, ask(9000))
    assert status == 400
    error = body["error"]
    assert error["code"] == "context_length_exceeded"
    assert re.search(r"needs \d+ tokens \(~\d+ prompt \+ 16 output\)", error["message"])
    assert "largest profile 'long' has max_model_len 8192" in error["message"]
    assert not container_running(project, "short-ctx")
    assert not container_running(project, "long-ctx")
    assert sup.handle("ctx").refusals == 1


async def test_upstream_context_error_is_retried_once_on_a_larger_profile(
    supervisor_factory, http
) -> None:
    # The config overstates the short profile (4096), as a low estimate would: the
    # stand-in still enforces 2048 and answers vLLM's 400, so the proxy retries on long.
    profiles = {"short": {"service": "short-ctx", "max_model_len": 4096},
                "long": {"service": "long-ctx", "max_model_len": 8192}}
    sup = await supervisor_factory({"ctx": {"profiles": profiles}})
    assert (await post(http, sup, ask(10)))[0] == 200
    status, headers, body = await post(http, sup, ask(3000))
    assert status == 200, body
    assert headers["X-Supervisor-Profile"] == "long"


async def test_upstream_context_error_without_a_larger_profile_reaches_the_client(
    supervisor_factory, http
) -> None:
    profiles = {"short": {"service": "short-ctx", "max_model_len": 9000}}
    sup = await supervisor_factory({"ctx": {"profiles": profiles}})
    status, _, body = await post(http, sup, ask(3000))
    assert status == 400
    assert "maximum context length is 2048 tokens" in body["message"]


@pytest.mark.parametrize("min_residency", [4.0])
async def test_swaps_are_never_closer_than_min_residency(
    supervisor_factory, http, min_residency
) -> None:
    sup = await supervisor_factory({
        "ctx": {"min_residency": f"{min_residency}s", "long_idle_timeout": "0.5s"}
    })
    handle = sup.handle("ctx")
    assert (await post(http, sup, ask(10)))[0] == 200
    first_swap = time.monotonic()
    assert (await post(http, sup, ask(3000)))[1]["X-Supervisor-Profile"] == "long"
    # The long profile idles out fast; the next cold start is the default profile again.
    await wait_for(lambda: handle.state is State.STOPPED, 15, "the long profile's idle stop")
    assert (await post(http, sup, ask(10)))[1]["X-Supervisor-Profile"] == "short"
    long_again = asyncio.create_task(post(http, sup, ask(3000)))
    # While the swap waits out min_residency, what fits the running profile is served.
    status, headers, _ = await post(http, sup, ask(10))
    assert (status, headers["X-Supervisor-Profile"]) == (200, "short")
    status, headers, _ = await long_again
    assert (status, headers["X-Supervisor-Profile"]) == (200, "long")
    assert handle.swaps == 2
    assert time.monotonic() - first_swap >= min_residency


async def test_audio_upload_too_long_for_every_profile_states_the_longest_that_fits(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"ctx": {"tokens_per_audio_second": 12.5}})
    audio = io.BytesIO()
    with wave.open(audio, "wb") as w:  # 1000 s of 1 kHz 8-bit audio: 12,500 tokens
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(1000)
        w.writeframes(b"\x80" * 1_000_000)
    form = aiohttp.FormData()
    form.add_field("model", "ctx")
    form.add_field("file", audio.getvalue(), filename="talk.wav", content_type="audio/wav")
    async with http.post(sup.url + "/v1/audio/transcriptions", data=form) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert "The longest audio it can take is 655 s (0:10:55)" in error["message"]
    assert "this audio is 1000 s (0:16:40)" in error["message"]
    assert not container_running(project, "long-ctx")
