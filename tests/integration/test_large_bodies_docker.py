"""Large JSON bodies through the real proxy: spooled to disk, not held in memory; an alias
spliced in on the way out; compressed bodies forwarded decoded; the retry on a larger
profile and the audio estimate working from the spool."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from supervisor.rules.table import State

from .conftest import COMPOSE_FILE, MODELS, compose_project, container_running, wait_for

REPO = Path(__file__).resolve().parents[2]
BODY_MB = 100
CONCURRENT = 8
BUDGET = 128 << 20  # max_body_memory for the RSS test: far below 8 x 100 MB
RSS_SLACK = 200 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def big_chat(model: str, megabytes: int) -> bytes:
    """A chat request of about `megabytes` MB: a long base64 string beside the messages
    (the stand-in ignores unknown fields)."""
    pad = base64.b64encode(os.urandom(megabytes * 750_000))
    return (b'{"model": ' + json.dumps(model).encode()
            + b', "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, '
            b'"attachment": "' + pad + b'"}')


def high_water_mark(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.fixture
def supervisor_process(project: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """`python -m supervisor serve` in its own process group (so its memory is its own),
    for chat-fast (alias `fast`) with max_body_memory BUDGET; stopped by its group."""
    port, admin = free_port(), free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "compose": {"file": str(COMPOSE_FILE), "project": project},
        "models": {"chat-fast": {**MODELS["chat-fast"], "aliases": ["fast"]}},
        "max_body_memory": BUDGET,
        "state_file": str(tmp_path / "state.json"),
    }
    path = tmp_path / "supervisor.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = (tmp_path / "supervisor.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "serve", "--config", str(path)],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        print((tmp_path / "supervisor.log").read_text()[-3000:])


async def test_eight_concurrent_100_mb_bodies_are_answered_within_the_memory_budget(
    supervisor_process: tuple[str, int], project: str
) -> None:
    url, pid = supervisor_process
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:

        async def listening() -> bool:
            try:
                async with http.get(url + "/v1/models") as r:
                    return r.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(listening, 60, "the supervisor to listen")
        baseline = high_water_mark(pid)
        bodies = {name: big_chat(name, BODY_MB) for name in ("chat-fast", "fast")}
        sent = {name: hashlib.sha256(body.replace(b'"fast"', b'"chat-fast"', 1)).hexdigest()
                for name, body in bodies.items()}

        async def one(i: int) -> tuple[int, dict[str, object]]:
            name = ("chat-fast", "fast")[i % 2]
            path = "/v1/chat/completions" if i < CONCURRENT // 2 else "/v1/echo/chat"
            async with http.post(url + path, data=bodies[name],
                                 headers={"Content-Type": "application/json"}) as r:
                answer = await r.json()
                if r.status == 200 and path.startswith("/v1/echo"):
                    assert answer["body_sha256"] == sent[name], i  # the alias spliced in
                    assert answer["body_len"] == len(bodies["chat-fast"])
                elif r.status == 200:
                    assert answer["model"] == "chat-fast"
                return r.status, answer

        began = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(CONCURRENT)))
        took = time.monotonic() - began
    peak = high_water_mark(pid)
    print(f"\n{CONCURRENT} concurrent {BODY_MB} MB JSON bodies in {took:.1f} s: supervisor "
          f"peak RSS {peak / 2**20:.0f} MiB (before them {baseline / 2**20:.0f} MiB), "
          f"max_body_memory {BUDGET / 2**20:.0f} MiB")
    assert [status for status, _ in results] == [200] * CONCURRENT, results
    assert peak < BUDGET + RSS_SLACK


async def test_a_compressed_body_reaches_the_model_decoded(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {"aliases": ["fast"]}})
    for size in (1_000, 3 << 20):  # held in memory, and spooled
        plain = json.dumps({"model": "fast", "text": "x" * size}).encode()
        async with http.post(sup.url + "/v1/echo/x", data=gzip.compress(plain),
                             headers={"Content-Type": "application/json",
                                      "Content-Encoding": "gzip"}) as r:
            assert r.status == 200, await r.text()
            echo = await r.json()
        forwarded = plain.replace(b'"fast"', b'"chat-fast"', 1)
        assert echo["body_sha256"] == hashlib.sha256(forwarded).hexdigest()
        assert "content-encoding" not in {k.lower() for k in echo["headers"]}


async def test_a_body_that_cannot_be_decoded_or_parsed_gets_400_and_starts_nothing(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    big = big_chat("chat-fast", 3)
    cases = [
        (b"\x1f\x8b not gzip at all", {"Content-Encoding": "gzip"}, "invalid_body"),
        (big[:-1], {}, "invalid_json"),  # a large body cut short of its closing brace
        (big[:100] + b"\xff" + big[101:], {}, "invalid_json"),
    ]
    for body, headers, code in cases:
        async with http.post(sup.url + "/v1/chat/completions", data=body,
                             headers={"Content-Type": "application/json", **headers}) as r:
            assert r.status == 400
            error = (await r.json())["error"]
        assert error["code"] == code, error
        assert error["type"] == "invalid_request_error"
    assert sup.handle("chat-fast").state is State.STOPPED
    assert not container_running(project, "chat-fast")


def conversation(turns: int, pad: int) -> dict[str, object]:
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": "ok"} for i in range(turns)]
    return {"model": "ctx", "messages": messages, "max_tokens": 16, "pad": "p" * pad}


async def test_a_spooled_body_is_sent_again_on_the_larger_profile(
    supervisor_factory, project, http
) -> None:
    # As in test_profiles_docker: 400 one-word turns fit the estimate for the short
    # profile, whose server counts 2416 tokens and refuses; the body, 2 MB here and so
    # spooled to disk, is read from the spool a second time for the long profile.
    sup = await supervisor_factory({"ctx": {}})
    async with http.post(sup.url + "/v1/chat/completions",
                         json=conversation(400, 2 << 20)) as r:
        body = await r.json()
        assert r.status == 200, body
        assert r.headers["X-Supervisor-Profile"] == "long"
    assert body["usage"]["prompt_tokens"] == 2400
    assert compose_project(project).log_lines("short-ctx", "standin: refused") == 1


def wav(seconds: int, rate: int = 16000) -> bytes:
    data = seconds * rate * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data) + bytes(data))


def audio_chat(seconds: int) -> dict[str, object]:
    clip = base64.b64encode(wav(seconds)).decode()
    return {"model": "ctx", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "transcribe this"},
        {"type": "input_audio", "input_audio": {"data": clip, "format": "wav"}}]}]}


async def test_base64_audio_in_a_spooled_body_is_measured_for_routing(
    supervisor_factory, project, http
) -> None:
    # 12.5 tokens per second: 300 s (3750 tokens, a 13 MB body) needs the long profile;
    # 1000 s (12,500 tokens, 43 MB) fits no profile and is refused before anything starts.
    sup = await supervisor_factory({"ctx": {"tokens_per_audio_second": 12.5}})
    async with http.post(sup.url + "/v1/chat/completions", json=audio_chat(1000)) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert "this audio is 1000 s (0:16:40)" in error["message"]
    assert not container_running(project, "long-ctx")
    async with http.post(sup.url + "/v1/chat/completions", json=audio_chat(300)) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Supervisor-Profile"] == "long"
