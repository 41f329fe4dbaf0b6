"""Config reload, toggles that survive a restart, keep-warm schedules on a moved
clock, client keys and the CLI, against real Compose stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
import io
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from supervisor.cli import main as cli
from supervisor.ops.control import CONTROL
from supervisor.rules.table import State
from tests.helpers import start_supervisor_from_file

from .conftest import COMPOSE_FILE, MODELS, chat, container_running, wait_for

TOKEN = "t0ken-for-config-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", TOKEN)


def write_config(path: Path, project: str, models: dict[str, dict[str, Any]],
                 **settings: Any) -> Path:
    config = {
        "listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"},
        "compose": {"file": str(COMPOSE_FILE), "project": project},
        "models": {n: {**MODELS[n], **extra} for n, extra in models.items()}, **settings,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
async def from_file(project: str):
    started = []

    async def make(path: Path):
        sup = await start_supervisor_from_file(path)
        started.append(sup)
        return sup

    yield make
    for sup in started:
        await sup.stop()


async def admin(http, sup, method: str, path: str, body=None):
    async with http.request(method, sup.admin + path, json=body, headers=AUTH) as r:
        return r.status, await r.json()


async def test_reload_applies_a_new_idle_timeout(tmp_path, project, from_file, http) -> None:
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}})
    sup = await from_file(path)
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    write_config(path, project, {"chat-fast": {"idle_timeout": "1s"}})
    status, body = await admin(http, sup, "POST", "/admin/reload")
    assert status == 200 and body["changed"] == ["chat-fast"]
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "the idle stop")


async def test_invalid_reload_is_refused_and_the_old_config_stays(
    tmp_path, project, from_file, http
) -> None:
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}})
    sup = await from_file(path)
    path.write_text(path.read_text().replace("idle_timeout", "x") + "\nlisten: nope\n")
    text = path.read_text()
    path.write_text(text.replace("models:", "models:\n  broken: {service: x, idle_timeout: 10x,"
                                 " upstream: 'http://127.0.0.1:1'}", 1))
    status, body = await admin(http, sup, "POST", "/admin/reload")
    assert status == 400 and body["error"]["code"] == "invalid_config"
    problems = "\n".join(body["error"]["problems"])
    assert "models.broken.idle_timeout: invalid duration '10x'" in problems
    assert "listen: 'nope' is not HOST:PORT" in problems
    status, model = await admin(http, sup, "GET", "/admin/models/chat-fast")
    assert status == 200 and model["idle_timeout"] == 600
    assert (await admin(http, sup, "GET", "/admin/models/broken"))[0] == 404


async def test_reload_lists_what_only_a_restart_applies(tmp_path, project, from_file, http):
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}})
    sup = await from_file(path)
    (tmp_path / "compose.env").write_text("UNUSED=1\n")
    compose = {"file": str(COMPOSE_FILE), "project": project, "env_file": "compose.env"}
    write_config(path, project, {"chat-fast": {}}, listen="127.0.0.1:1", compose=compose,
                 admin={"listen": "127.0.0.1:1"})
    status, body = await admin(http, sup, "POST", "/admin/reload")
    assert status == 200, body
    assert body["restart_required"] == ["listen", "compose", "admin"]
    assert (body["added"], body["removed"], body["changed"]) == ([], [], [])
    # Until that restart, both APIs stay where they listen and the model starts as before.
    assert (await admin(http, sup, "GET", "/admin/models/chat-fast"))[0] == 200
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    assert container_running(project, "chat-fast")


async def test_reload_adds_and_removes_models(tmp_path, project, from_file, http) -> None:
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}})
    sup = await from_file(path)
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    write_config(path, project, {"slow-stop": {}})
    status, body = await admin(http, sup, "POST", "/admin/reload")
    assert (status, body["added"], body["removed"]) == (200, ["slow-stop"], ["chat-fast"])
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 404
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "removed: stopped")
    async with http.post(sup.url + "/v1/chat/completions", json=chat("slow-stop")) as r:
        assert r.status == 200


async def test_pin_and_idle_timeout_survive_a_restart(tmp_path, project, from_file, http):
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}, "slow-stop": {}})
    sup = await from_file(path)
    await admin(http, sup, "PUT", "/admin/models/chat-fast/pin", {"pinned": True})
    await admin(http, sup, "PUT", "/admin/models/slow-stop/idle-timeout", {"seconds": 42})
    saved = (tmp_path / "s.state.json").read_text()
    assert '"pinned": true' in saved and '"idle_timeout": 42' in saved
    await sup.stop()
    again = await from_file(path)
    _, fast = await admin(http, again, "GET", "/admin/models/chat-fast")
    _, slow = await admin(http, again, "GET", "/admin/models/slow-stop")
    assert fast["pinned"] is True and slow["idle_timeout"] == 42


async def test_keep_warm_window_on_a_moved_clock(tmp_path, project, from_file, http) -> None:
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {"idle_timeout": "1s"}},
                        timezone="Europe/Berlin")
    sup = await from_file(path)
    control = sup.runner.app[CONTROL]
    berlin = ZoneInfo("Europe/Berlin")
    control.keep_warm.clock.set(datetime(2026, 3, 2, 8, 44, 59, tzinfo=berlin))  # a Monday
    status, body = await admin(http, sup, "POST", "/admin/schedules", {
        "name": "office", "model": "chat-fast", "start": "45 8 * * mon-fri",
        "end": "0 18 * * mon-fri"})
    assert status == 201 and body["open"] is False
    assert body["next_start"].startswith("2026-03-02T08:45:00+01:00")
    handle = sup.handle("chat-fast")
    await wait_for(lambda: handle.state is State.READY, 15, "the 08:45 start")
    assert handle.is_pinned and handle.scheduled == {"office"}
    # At 17:59:59 it is still pinned (its idle timeout is 1 s); at 18:00 the idle rules apply.
    control.keep_warm.clock.set(datetime(2026, 3, 2, 17, 59, 58, tzinfo=berlin))
    control.keep_warm.clock_changed()
    assert handle.is_pinned and container_running(project, "chat-fast")
    await wait_for(lambda: handle.state is State.STOPPED, 15, "the stop after 18:00")
    assert not handle.is_pinned
    _, listed = await admin(http, sup, "GET", "/admin/schedules")
    assert [s["name"] for s in listed["schedules"]] == ["office"]
    assert (await admin(http, sup, "DELETE", "/admin/schedules/office"))[0] == 200
    bad = await admin(http, sup, "POST", "/admin/schedules", {
        "name": "x", "model": "chat-fast", "start": "99 8 * * *", "end": "0 18 * * *"})
    assert bad[0] == 400 and "invalid cron" in bad[1]["error"]["message"]


async def test_client_keys_guard_the_proxy_and_the_upstream_key_is_injected(
    tmp_path, project, from_file, http, monkeypatch, caplog
) -> None:
    caplog.set_level("DEBUG")
    (tmp_path / "keys").write_text("# team keys\nsk-team-a\nsk-team-b\n")
    monkeypatch.setenv("BACKEND_KEY", "backend-secret")
    path = write_config(tmp_path / "s.yaml", project,
                        {"chat-fast": {"upstream_key_env": "BACKEND_KEY"}},
                        client_auth={"keys_file": "keys"})
    sup = await from_file(path)
    url = sup.url + "/v1/echo"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        async with http.post(url, json=chat("chat-fast"), headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "invalid_api_key"
    assert sup.handle("chat-fast").state is State.STOPPED  # nothing started
    async with http.post(url, json=chat("chat-fast"),
                         headers={"Authorization": "Bearer sk-team-b"}) as r:
        assert r.status == 200
        echoed = (await r.json())["headers"]
    assert echoed["Authorization"] == "Bearer backend-secret"
    for secret in ("sk-team-a", "sk-team-b", "sk-wrong", "backend-secret", TOKEN):
        assert secret not in caplog.text


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli(list(args))
    return code, out.getvalue()


async def test_cli_commands(tmp_path, project, from_file, http, monkeypatch) -> None:
    path = write_config(tmp_path / "s.yaml", project, {"chat-fast": {}, "sleeper": {}})
    sup = await from_file(path)
    monkeypatch.setenv("SUPERVISOR_ADMIN_URL", sup.admin)

    async def run(*args: str) -> tuple[int, str]:
        return await asyncio.to_thread(run_cli, *args, "--config", str(path))

    code, out = await run("status")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["MODEL", "STATE", "PROFILE"]
    assert "chat-fast" in out and "stopped" in out
    assert (await run("start", "chat-fast"))[0] == 0
    await wait_for(lambda: sup.handle("chat-fast").state is State.READY, 15, "CLI start")
    assert "(pinned)" in (await run("pin", "chat-fast"))[1]
    assert sup.handle("chat-fast").pinned
    assert (await run("unpin", "chat-fast"))[0] == 0 and not sup.handle("chat-fast").pinned
    assert (await run("start", "sleeper"))[0] == 0
    await wait_for(lambda: sup.handle("sleeper").state is State.READY, 15, "sleeper up")
    assert (await run("sleep", "sleeper"))[0] == 0
    await wait_for(lambda: sup.handle("sleeper").state is State.ASLEEP, 15, "asleep")
    assert (await run("wake", "sleeper"))[0] == 0
    await wait_for(lambda: sup.handle("sleeper").state is State.READY, 15, "awake")
    code, out = await run("sleep", "chat-fast")
    assert code == 1 and "409" in out
    assert (await run("drain"))[0] == 0
    assert "maintenance mode" in (await run("status"))[1]
    assert (await run("undrain"))[0] == 0
    assert (await run("stop", "chat-fast"))[0] == 0
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "CLI stop")
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", "wrong")
    code, out = await run("status")
    assert code == 1 and "401" in out and "wrong" not in out
