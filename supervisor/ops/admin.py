"""The admin API: aiohttp routes on their own listener (127.0.0.1:8081 by default),
behind a bearer token. Routes parse and format only; the work is in Control and
the model handles. The OpenAPI document (supervisor/openapi.py) lists them all.
`/` is the status page (status_page.py): public, as it is where the token is typed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supervisor.clients.report import usage_report
from supervisor.config import ConfigError, ScheduleConfig
from supervisor.lifecycle.registry import Model
from supervisor.ops import event_stream
from supervisor.ops.control import CONTROL, Control
from supervisor.ops.gpus import gpu_view
from supervisor.ops.openapi import MAX_EVENTS, spec
from supervisor.ops.status_page import status_page
from supervisor.proxy.appkeys import Handler
from supervisor.proxy.http_errors import error_response, openai_errors
from supervisor.refusal import BadRequest, NotFound
from supervisor.runtime.base import RuntimeFailure

log = logging.getLogger(__name__)

PUBLIC = frozenset({"/healthz", "/readyz", "/"})  # "/": the status page asks for the token
READY_TIMEOUT = 5.0
MAX_IDLE_TIMEOUT = 30 * 86400


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StartBody(_Body):
    profile: str | None = None


class StopBody(_Body):
    force: bool = False


class PinBody(_Body):
    pinned: bool


class IdleBody(_Body):
    seconds: float | None = Field(ge=0, le=MAX_IDLE_TIMEOUT, allow_inf_nan=False)


class ProfileBody(_Body):
    profile: str


class ScheduleBody(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    model: str
    start: str
    end: str
    profile: str | None = None


B = TypeVar("B", bound=_Body)


async def _body(request: web.Request, kind: type[B], *, required: bool = True) -> B:
    raw = await request.read()
    if not raw.strip() and not required:
        return kind()
    try:
        return kind.model_validate(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ValidationError):
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                               for e in exc.errors())
        else:
            detail = "the body is not JSON"
        raise BadRequest(f"Invalid request: {detail}") from None


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    control = request.app[CONTROL]
    if request.path not in PUBLIC and control.admin_secrets and not control.admin_secrets.allows(
            request.headers.get("Authorization")):
        return error_response(401, "Unauthorized", "unauthorized",
                              headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _handle(request: web.Request) -> Model:
    name = request.match_info["name"]
    handle = request.app[CONTROL].find(name)
    if handle is None:
        raise NotFound(f"no model named {name!r}")
    return handle


def _model(request: web.Request, handle: Model, status: int = 200) -> web.Response:
    return web.json_response(request.app[CONTROL].describe(handle), status=status)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await control.runtime.ping()
    except (RuntimeFailure, TimeoutError) as exc:
        return error_response(503, f"Docker is not reachable: {exc}", "not_ready")
    if control.effects.runtime_down is not None:  # back, but not yet re-synced: soon
        control.effects.runtime_back.set()
        return error_response(503, "Docker is back; the supervisor is re-syncing with it",
                              "not_ready", retry_after=1)
    return web.json_response({"ready": True, "models": len(control.registry.handles)})


async def openapi(request: web.Request) -> web.Response:
    handles = request.app[CONTROL].registry.handles.values()
    profiles = sorted({p.name for h in handles for p in h.profiles})
    return web.json_response(spec(sorted(h.name for h in handles), profiles))


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROL].models())


async def get_model(request: web.Request) -> web.Response:
    """One model, with its last starts and wakes (only here: every action answers with
    describe())."""
    control, handle = request.app[CONTROL], _handle(request)
    return web.json_response({**control.describe(handle), "starts": control.starts(handle.name),
                              "wake_seconds": control.wake_seconds(handle.name)})


async def starts(request: web.Request) -> web.Response:
    """The last starts and wakes of a model, each phase's seconds (anatomy/)."""
    handle = _handle(request)
    return web.json_response({"model": handle.name,
                              "starts": request.app[CONTROL].starts(handle.name)})


def _check_profile(handle: Model, profile: str | None) -> None:
    if profile is not None and profile not in {p.name for p in handle.profiles}:
        names = ", ".join(p.name for p in handle.profiles)
        raise BadRequest(f"Invalid request: profile: {profile!r} is not a profile of "
                         f"{handle.name!r} ({names})")


async def start(request: web.Request) -> web.Response:
    handle = _handle(request)
    body = await _body(request, StartBody, required=False)
    _check_profile(handle, body.profile)
    handle.start(body.profile)
    return _model(request, handle, 202)


async def stop(request: web.Request) -> web.Response:
    handle = _handle(request)
    body = await _body(request, StopBody, required=False)
    force = body.force or request.query.get("force", "").lower() in ("1", "true", "yes")
    handle.stop(force=force)
    return _model(request, handle, 202)


async def sleep(request: web.Request) -> web.Response:
    handle = _handle(request)
    handle.sleep()
    return _model(request, handle, 202)


async def wake(request: web.Request) -> web.Response:
    handle = _handle(request)
    handle.wake()
    return _model(request, handle, 202)


async def pin(request: web.Request) -> web.Response:
    handle = _handle(request)
    body = await _body(request, PinBody)
    handle.set_pinned(body.pinned)
    await request.app[CONTROL].persist()
    return _model(request, handle)


async def idle_timeout(request: web.Request) -> web.Response:
    handle = _handle(request)
    body = await _body(request, IdleBody)
    handle.set_idle_timeout(body.seconds)
    await request.app[CONTROL].persist()
    return _model(request, handle)


async def profile(request: web.Request) -> web.Response:
    handle = _handle(request)
    body = await _body(request, ProfileBody)
    _check_profile(handle, body.profile)
    handle.start(body.profile)
    return _model(request, handle, 202)


async def events(request: web.Request) -> web.Response:
    raw = request.query.get("limit", str(MAX_EVENTS))
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= MAX_EVENTS:
        raise BadRequest(f"Invalid request: limit: expected 1 to {MAX_EVENTS}")
    return web.json_response(
        {"events": request.app[CONTROL].metrics.events.recent(int(raw))})


async def events_stream(request: web.Request) -> web.StreamResponse:
    return await event_stream.stream(request, request.app[CONTROL].metrics.events)


async def gpus(request: web.Request) -> web.Response:
    return web.json_response(gpu_view(request.app[CONTROL].metrics.registry))


async def usage(request: web.Request) -> web.Response:
    return web.json_response(usage_report(request.app[CONTROL].gate.clients))


async def savings(request: web.Request) -> web.Response:
    account = request.app[CONTROL].savings
    if account is None:
        raise NotFound("Not found: no savings account in this process")
    return web.json_response(account.report())


async def queue(request: web.Request) -> web.Response:
    """Per model, the requests held for it, in the order they are released."""
    return web.json_response({"models": {
        h.name: {"state": h.state.value, "waiting": [s.to_json() for s in h.queue()]}
        for h in request.app[CONTROL].registry.handles.values()}})


async def workers(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROL].workers())


async def drain(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROL].drain(True))


async def undrain(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROL].drain(False))


async def reload(request: web.Request) -> web.Response:
    try:
        result = await request.app[CONTROL].reload()
    except ConfigError as exc:
        log.warning("config reload refused: %s", "; ".join(exc.problems))
        return error_response(400, "The config file is invalid; the old config stays in "
                              "force", "invalid_config", extra={"problems": exc.problems})
    return web.json_response(result)


def _schedule(control: Control, name: str) -> dict[str, Any]:
    kw = control.keep_warm
    return {"name": name, **kw.schedules[name].model_dump(), "origin": kw.origin[name],
            **kw.next_edges(name)}


async def list_schedules(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    return web.json_response(
        {"schedules": [_schedule(control, n) for n in control.keep_warm.schedules]})


async def add_schedule(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    body = await _body(request, ScheduleBody)
    try:
        schedule = ScheduleConfig.model_validate(body.model_dump(exclude={"name"}))
    except ValidationError as exc:
        detail = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise BadRequest(f"Invalid request: {detail}") from None
    await control.add_schedule(body.name, schedule)
    return web.json_response(_schedule(control, body.name), status=201)


async def delete_schedule(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    name = request.match_info["schedule"]
    await control.remove_schedule(name)
    return web.json_response({"deleted": name})


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", status_page),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/admin/openapi.json", openapi),
    ("GET", "/admin/models", list_models),
    ("GET", "/admin/models/{name}", get_model),
    ("GET", "/admin/models/{name}/starts", starts),
    ("POST", "/admin/models/{name}/start", start),
    ("POST", "/admin/models/{name}/stop", stop),
    ("POST", "/admin/models/{name}/sleep", sleep),
    ("POST", "/admin/models/{name}/wake", wake),
    ("PUT", "/admin/models/{name}/pin", pin),
    ("PUT", "/admin/models/{name}/idle-timeout", idle_timeout),
    ("PUT", "/admin/models/{name}/profile", profile),
    ("POST", "/admin/drain", drain),
    ("POST", "/admin/undrain", undrain),
    ("POST", "/admin/reload", reload),
    ("GET", "/admin/schedules", list_schedules),
    ("POST", "/admin/schedules", add_schedule),
    ("DELETE", "/admin/schedules/{schedule}", delete_schedule),
    ("GET", "/admin/events", events),
    ("GET", "/admin/events/stream", events_stream),
    ("GET", "/admin/gpus", gpus),
    ("GET", "/admin/workers", workers),
    ("GET", "/admin/usage", usage),
    ("GET", "/admin/queue", queue),
    ("GET", "/admin/savings", savings),
]


def build_admin_app(control: Control) -> web.Application:
    app = web.Application(middlewares=[openai_errors, auth], client_max_size=1 << 20)
    app[CONTROL] = control
    event_stream.install(app)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
