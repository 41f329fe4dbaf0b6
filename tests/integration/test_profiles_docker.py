"""Context-aware profile swap on real Compose, with stand-ins that enforce their
max length with vLLM's exact error text (short-ctx: 2048, long-ctx: 8192)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import time
import wave

import aiohttp
import pytest

from tests.helpers import metric_value, model_status, scrape

from .conftest import compose_project, container_running, starts, wait_for

URL = "/v1/chat/completions"


def ask(words: int, **extra: object) -> dict[str, object]:
    return {"model": "ctx", "messages": [{"role": "user", "content": "word " * words}],
            "max_tokens": 16, **extra}


def conversation(turns: int) -> dict[str, object]:
    """`turns` one-word messages. Without a tokenizer the estimate counts ~1 token each; the
    stand-ins, like vLLM, also count the chat template's 5 tokens around each message."""
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": "ok"} for i in range(turns)]
    return {"model": "ctx", "messages": messages, "max_tokens": 16}


async def post(http, sup, body) -> tuple[int, dict[str, str], dict]:
    async with http.post(sup.url + URL, json=body) as r:
        return r.status, dict(r.headers), await r.json()


async def swaps(http, sup, from_profile: str = "short", to_profile: str = "long") -> float:
    return metric_value(await scrape(http, sup), "supervisor_model_profile_swaps_total",
                        model="ctx", from_profile=from_profile, to_profile=to_profile)


async def state(http, sup) -> str:
    return (await model_status(http, sup, "ctx"))["state"]


def refused(project: str, service: str) -> int:
    """How many requests the stand-in of `service` refused as too long (it logs each)."""
    return compose_project(project).log_lines(service, "standin: refused")


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
    assert await swaps(http, sup) == 1
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

    async def swapping() -> bool:
        return await state(http, sup) != "ready"

    await wait_for(swapping, 10, "the swap to begin")
    shorts = await asyncio.gather(*(post(http, sup, ask(20)) for _ in range(30)))
    assert [s for s, _, _ in shorts] == [200] * 30
    assert (await long_one)[0] == 200
    assert await swaps(http, sup) == 1


async def test_stream_in_flight_on_the_old_profile_finishes_before_the_swap(
    supervisor_factory, http, project
) -> None:
    sup = await supervisor_factory({"ctx": {}})

    async def answered_at(body: object) -> tuple[float, int, dict[str, str]]:
        """When the response's headers arrived, its status and headers."""
        async with http.post(sup.url + URL, json=body) as r:
            return time.monotonic(), r.status, dict(r.headers)

    async def draining() -> bool:
        return await state(http, sup) == "draining"

    body = ask(10, stream=True, max_tokens=10, stream_delay=0.3)  # 3 s of streaming
    async with http.post(sup.url + URL, json=body) as stream:
        assert stream.headers["X-Supervisor-Profile"] == "short"
        first = await stream.content.readline()
        assert first.startswith(b"data: ")
        swap = asyncio.create_task(answered_at(ask(3000)))
        await wait_for(draining, 5, "draining")
        rest = await stream.read()
        stream_ended = time.monotonic()
    assert rest.count(b"data: ") == 10  # 9 more chunks and [DONE]: nothing was cut
    assert rest.rstrip().endswith(b"data: [DONE]")
    answered, status, headers = await swap
    assert (status, headers["X-Supervisor-Profile"]) == (200, "long")
    assert float(headers["X-Supervisor-Hold-Seconds"]) > 0
    # The long request was held until the stream on the old profile had ended.
    assert answered > stream_ended
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
    assert metric_value(await scrape(http, sup), "supervisor_refusals_total",
                        model="ctx", reason="context_length") == 1


async def test_upstream_context_error_is_retried_once_on_a_larger_profile(
    supervisor_factory, project, http
) -> None:
    # 400 one-word turns: the estimate (~400 + 16 output) fits the short profile, but the
    # server counts 400 x (1 + 5 template tokens) + 16 = 2416 > 2048 and answers vLLM's 400.
    sup = await supervisor_factory({"ctx": {}})
    assert (await post(http, sup, ask(10)))[1]["X-Supervisor-Profile"] == "short"
    status, headers, body = await post(http, sup, conversation(400))
    assert status == 200, body
    assert headers["X-Supervisor-Profile"] == "long"
    assert body["usage"]["prompt_tokens"] == 2400  # the long profile's own count
    assert refused(project, "short-ctx") == 1  # it went to the short profile first
    assert await swaps(http, sup) == 1
    assert starts(project, "short-ctx") == 1 and starts(project, "long-ctx") == 1


async def test_a_retry_refused_again_reaches_the_client(supervisor_factory, project, http):
    # 1400 turns: estimated ~1416 tokens (short), counted 8416 by the servers: more than the
    # long profile's 8192 too. The one retry on long is refused, and that 400 is the answer.
    sup = await supervisor_factory({"ctx": {}})
    status, headers, body = await post(http, sup, conversation(1400))
    assert status == 400
    assert headers["X-Supervisor-Profile"] == "long"
    assert "maximum context length is 8192 tokens" in body["message"]
    assert (refused(project, "short-ctx"), refused(project, "long-ctx")) == (1, 1)


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
    assert (await post(http, sup, ask(10)))[0] == 200
    first_swap = time.monotonic()
    assert (await post(http, sup, ask(3000)))[1]["X-Supervisor-Profile"] == "long"

    async def stopped() -> bool:
        return await state(http, sup) == "stopped"

    # The long profile idles out fast; the next cold start is the default profile again.
    await wait_for(stopped, 15, "the long profile's idle stop")
    assert (await post(http, sup, ask(10)))[1]["X-Supervisor-Profile"] == "short"
    long_again = asyncio.create_task(post(http, sup, ask(3000)))
    # While the swap waits out min_residency, what fits the running profile is served.
    status, headers, _ = await post(http, sup, ask(10))
    assert (status, headers["X-Supervisor-Profile"]) == (200, "short")
    status, headers, _ = await long_again
    assert (status, headers["X-Supervisor-Profile"]) == (200, "long")
    assert await swaps(http, sup) == 2
    assert time.monotonic() - first_swap >= min_residency


def wav(seconds: int) -> bytes:
    """`seconds` of silence as a WAV file: 1 kHz, 8-bit, mono (1000 bytes a second)."""
    audio = io.BytesIO()
    with wave.open(audio, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(1000)
        w.writeframes(b"\x80" * (1000 * seconds))
    return audio.getvalue()


def upload(audio: bytes, boundary: str = "ctx-b0undary") -> tuple[bytes, dict[str, str]]:
    """A transcription form as the OpenAI client sends it: `model`, then the file."""
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nctx\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="talk.wav"\r\nContent-Type: audio/wav\r\n\r\n').encode()
    body += audio + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


async def test_an_audio_upload_too_long_for_the_short_profile_is_served_by_the_long_one(
    supervisor_factory, project, http
) -> None:
    # 12.5 tokens per second: 60 s (750 tokens) fits the short profile's 2048, while
    # 300 s (3750 tokens) needs the long one's 8192.
    sup = await supervisor_factory({"ctx": {"tokens_per_audio_second": 12.5}})
    for seconds, profile in [(60, "short"), (300, "long")]:
        body, headers = upload(wav(seconds))
        async with http.post(sup.url + "/v1/audio/transcriptions", data=body,
                             headers=headers) as r:
            result = await r.json()
            assert r.status == 200, result
            assert r.headers["X-Supervisor-Profile"] == profile, seconds
        assert result["model"] == "ctx"
        assert result["sha256"] == hashlib.sha256(body).hexdigest()  # all of it arrived
    assert await swaps(http, sup) == 1
    assert container_running(project, "long-ctx")
    assert not container_running(project, "short-ctx")


async def test_audio_upload_too_long_for_every_profile_states_the_longest_that_fits(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"ctx": {"tokens_per_audio_second": 12.5}})
    form = aiohttp.FormData()
    form.add_field("model", "ctx")
    # 1000 s: 12,500 tokens
    form.add_field("file", wav(1000), filename="talk.wav", content_type="audio/wav")
    async with http.post(sup.url + "/v1/audio/transcriptions", data=form) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert "The longest audio it can take is 655 s (0:10:55)" in error["message"]
    assert "this audio is 1000 s (0:16:40)" in error["message"]
    assert not container_running(project, "long-ctx")
