"""The proxy as a client sees it: transparency, streaming, uploads and errors."""

from __future__ import annotations

import hashlib
import json
import os
import time

import openai
import pytest

import supervisor.app

from .conftest import chat, container_running


async def test_streaming_chunks_reach_the_client_before_the_upstream_finishes(
    supervisor_factory,
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="chat-fast",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        max_tokens=5,
        extra_body={"stream_delay": 0.5},
    )
    arrivals = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    # The upstream needs 2 s after its first chunk; the client must not wait for all of it.
    assert arrivals[-1] - arrivals[0] > 1.5
    await client.close()


async def test_requests_are_forwarded_transparently(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    body = b'{"model": "chat-fast", "payload": "\\u00e9t\\u00e9"}'
    async with http.put(
        sup.url + "/v1/echo/some/path?a=1&b=two%20words",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Custom": "kept",
            "Authorization": "Bearer client-key",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
        },
    ) as r:
        assert r.status == 200
        echo = await r.json()
    assert echo["method"] == "PUT"
    assert echo["path"] == "/v1/echo/some/path"
    assert echo["query"] == "a=1&b=two%20words"
    headers = {k.lower(): v for k, v in echo["headers"].items()}
    assert headers["x-custom"] == "kept"
    assert headers["authorization"] == "Bearer client-key"
    assert "x-hop" not in headers
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def _multipart(boundary: str, fields: list[tuple[str, bytes, str | None]]) -> bytes:
    out = b""
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("model_first", [True, False], ids=["model-first", "model-last"])
async def test_large_upload_is_streamed_with_its_model_field(
    supervisor_factory, http, model_first: bool
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    audio = os.urandom(20 << 20)
    fields = [("file", audio, "talk.wav"), ("language", b"en", None)]
    model = ("model", b"chat-fast", None)
    fields = [model, *fields] if model_first else [*fields, model]
    body = _multipart("b0undary", fields)
    async with http.post(
        sup.url + "/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    ) as r:
        assert r.status == 200
        result = await r.json()
    assert result["model"] == "chat-fast"
    assert result["received_bytes"] == len(body)
    assert result["sha256"] == hashlib.sha256(body).hexdigest()


async def test_openai_client_upload_reaches_the_model(supervisor_factory) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    result = await client.audio.transcriptions.create(
        model="chat-fast", file=("talk.wav", os.urandom(1 << 20))
    )
    assert result.text == "stand-in transcription"
    await client.close()


async def test_models_list_answers_from_config_without_starting(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {"aliases": ["fast"]}, "chat-slow": {}})
    async with http.get(sup.url + "/v1/models") as r:
        listing = await r.json()
    assert {m["id"]: m["state"] for m in listing["data"]} == {
        "chat-fast": "stopped",
        "chat-slow": "stopped",
    }
    assert next(m for m in listing["data"] if m["id"] == "chat-fast")["aliases"] == ["fast"]
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    assert (await client.models.retrieve("chat-slow")).id == "chat-slow"
    assert not container_running(project, "chat-fast")
    assert not container_running(project, "chat-slow")
    await client.close()


async def test_unknown_model_is_404_listing_known_models(supervisor_factory) -> None:
    sup = await supervisor_factory({"chat-fast": {}, "chat-slow": {}})
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    error = caught.value.body
    assert error["code"] == "model_not_found"
    assert "gpt-nope" in error["message"]
    assert "chat-fast, chat-slow" in error["message"]
    await client.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 42}', "missing_model"),
        (b"", "missing_model"),
    ],
)
async def test_bad_bodies_get_400_in_openai_shape(supervisor_factory, http, body, code) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    async with http.post(
        sup.url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]


async def test_a_json_body_over_the_size_limit_gets_413_and_starts_nothing(
    supervisor_factory, project, http, monkeypatch
) -> None:
    # The real limit is 512 MiB (JSON with base64 audio); 1 MiB keeps the test quick.
    limit = 1 << 20
    monkeypatch.setattr(supervisor.app, "MAX_BODY_BYTES", limit)
    sup = await supervisor_factory({"chat-fast": {}})

    def body(size: int) -> bytes:
        """A valid chat request of exactly `size` bytes (the stand-in ignores `pad`)."""
        empty = json.dumps(chat("chat-fast", pad="")).encode()
        return json.dumps(chat("chat-fast", pad="x" * (size - len(empty)))).encode()

    headers = {"Content-Type": "application/json"}
    async with http.post(sup.url + "/v1/chat/completions", data=body(limit + 1),
                         headers=headers) as r:
        assert r.status == 413
        error = (await r.json())["error"]
    assert error["code"] == "body_too_large"
    assert error["type"] == "invalid_request_error"
    assert "too large" in error["message"]
    assert not container_running(project, "chat-fast")
    # The limit itself is allowed.
    async with http.post(sup.url + "/v1/chat/completions", data=body(limit),
                         headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["choices"][0]["message"]["content"] == "stand-in reply"


async def test_multipart_without_model_is_400(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    body = _multipart("xyz", [("file", b"RIFF....", "a.wav")])
    async with http.post(
        sup.url + "/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "missing_model"


async def test_unknown_route_is_404_json(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    async with http.get(sup.url + "/nope") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


async def test_an_alias_reaches_the_server_as_its_served_name(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {"aliases": ["fast", "gpt-fast"]}})
    for name in ("fast", "chat-fast"):
        async with http.post(sup.url + "/v1/chat/completions",
                             json=chat(name, payload="é")) as r:
            assert r.status == 200
            assert (await r.json())["model"] == "chat-fast"  # the stand-in echoes it
