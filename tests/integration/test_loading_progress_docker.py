"""Loading progress for streaming clients held through a cold start: SSE comments keep
every proxy in between from timing out, then the model's own stream follows on the same
response. Real Compose, stand-ins, the official openai client, a real nginx in front."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from .conftest import chat, compose_project, wait_for

PROGRESS = {"loading_progress": True, "loading_progress_after": "0.3s",
            "loading_progress_every": "0.5s"}


async def test_openai_client_streams_the_completion_after_the_progress_comments(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"chat-slow": PROGRESS})
    async with http.post(sup.url + "/v1/chat/completions",
                         json=chat("chat-slow", stream=True, max_tokens=3)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode().rstrip("\n") async for line in r.content]
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 3, lines  # a 3 s cold start, a comment every 0.5 s
    assert comments[0].startswith(": model chat-slow is starting (")
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and len(data) >= 4


async def test_official_openai_client_gets_its_completion_through_a_cold_start(
    supervisor_factory,
) -> None:
    sup = await supervisor_factory({"chat-slow": PROGRESS})
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="chat-slow", messages=[{"role": "user", "content": "hi"}], stream=True,
        max_tokens=3)
    pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces)
    await client.close()


async def test_a_start_that_fails_after_the_200_ends_the_stream_with_an_error_event(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"crashy": {**PROGRESS, "loading_progress_after": "0.05s"}})
    async with http.post(sup.url + "/v1/chat/completions",
                         json=chat("crashy", stream=True)) as r:
        assert r.status == 200
        lines = [line.decode().rstrip("\n") async for line in r.content]
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]", lines
    assert '"code": "model_start_failed"' in data[-2]
    assert "exited with code 3" in data[-2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def nginx_in_front() -> Iterator[Callable[[str], str]]:
    """A real nginx (proxy_read_timeout 5s, no buffering) in front of a supervisor."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is missing: scripts/setup.sh installs nginx-light")
    running: list[subprocess.Popen[bytes]] = []
    folder = Path(tempfile.mkdtemp(prefix="ms-nginx-"))

    def start(upstream: str) -> str:
        port = _free_port()
        conf = folder / f"nginx-{port}.conf"
        conf.write_text(f"""
worker_processes 1;
pid {folder}/nginx-{port}.pid;
error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fcgi; uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_read_timeout 5s;
    }}
  }}
}}
""")
        proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"],
                                stderr=subprocess.PIPE)
        running.append(proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in running:
        proc.terminate()
        proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


async def _through(http: aiohttp.ClientSession, base: str) -> tuple[int, str]:
    body = chat("glacial", stream=True, max_tokens=2)
    async with http.post(base + "/v1/chat/completions", json=body,
                         timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, await r.text()


async def test_behind_nginx_a_long_cold_start_needs_loading_progress(
    supervisor_factory, project, http, nginx_in_front
) -> None:
    plain = await supervisor_factory({"glacial": {}})
    front = nginx_in_front(plain.url)
    await wait_for(lambda: _answers(front), 10, "nginx to listen")
    status, _ = await _through(http, front)
    assert status == 504  # nginx's proxy_read_timeout cut the held request
    await plain.stop()
    compose_project(project).run("stop", "-t", "0", "glacial")
    with_progress = await supervisor_factory({"glacial": {**PROGRESS,
                                                          "loading_progress_every": "2s"}})
    front = nginx_in_front(with_progress.url)
    await wait_for(lambda: _answers(front), 10, "nginx to listen")
    status, text = await _through(http, front)
    assert status == 200
    assert ": model glacial is starting" in text
    assert text.rstrip().endswith("data: [DONE]")


def _answers(base: str) -> bool:
    host, port = base.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False
