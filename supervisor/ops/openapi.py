"""The admin API's OpenAPI 3 document, served at /admin/openapi.json.

Built per request from the live model and profile names (as enums), so a
client, or a fuzzer, sees exactly what it may send. tests/integration checks
that every admin route is documented here and fuzzes the API from this spec.
"""

from __future__ import annotations

from typing import Any

from supervisor.gpus.needs import MemorySource
from supervisor.rules.table import State

Json = dict[str, Any]

ERROR: Json = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "code": {"type": ["string", "null"]}, "param": {"type": ["string", "null"]},
        "problems": {"type": "array", "items": {"type": "string"}}}}},
}
NULLABLE_NUMBER: Json = {"type": ["number", "null"]}
_GPU_BYTES: Json = {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"}}
PLACEMENT: Json = {
    "type": ["object", "null"],
    "description": "GPU placement of the active (else the last) profile; null while "
                   "placement is off (no `gpus:` key and no NVML)",
    "required": ["profile", "gpus", "need_bytes", "source", "detail", "reserved_bytes"],
    "properties": {
        "profile": {"type": "string"},
        "gpus": {"type": ["array", "null"], "items": {"type": "integer"},
                 "description": "host GPU indices; [] uses no GPU; null: cannot be told"},
        "gpus_origin": {"type": "string", "description": "where the GPUs come from"},
        "need_bytes": {**_GPU_BYTES, "additionalProperties": {"type": ["integer", "null"]},
                       "description": "bytes needed per GPU index; null: the whole GPU"},
        "source": {"type": "string", "enum": [s.value for s in MemorySource],
                   "description": "where the need comes from: the vram key, vLLM's "
                                  "--gpu-memory-utilization x the GPU's total, the peak "
                                  "measured at an earlier run, or unknown (whole GPUs)"},
        "detail": {"type": "string"},
        "asleep_bytes": {"type": ["object", "null"], "propertyNames": {"pattern": "^[0-9]+$"},
                         "additionalProperties": {"type": "integer"},
                         "description": "what it keeps per GPU while asleep, if known"},
        "reserved_bytes": {**_GPU_BYTES, "additionalProperties": {"type": "integer"},
                           "description": "what the budget counts as its own now, per GPU "
                                          "(empty while stopped or waiting to start)"},
    },
}
REPLICAS: Json = {
    "type": ["array", "null"],
    "description": "a model with `replicas:`: one row per replica (null for the others)",
    "items": {"type": "object", "required": ["name", "state", "in_flight", "held", "served"],
              "properties": {
                  "name": {"type": "string", "description": "<model>#<n>, n from 1"},
                  "state": {"type": "string", "enum": [s.value for s in State]},
                  "profile": {"type": ["string", "null"]}, "service": {"type": "string"},
                  "upstream": {"type": "string"}, "in_flight": {"type": "integer"},
                  "held": {"type": "integer"},
                  "served": {"type": "integer", "description": "requests it was given"},
                  "pinned": {"type": "boolean"}, "last_error": {"type": ["string", "null"]},
                  "start_failures": {"type": "integer"},
                  "retry_in_seconds": {"type": "number"},
                  "vram_bytes": {"type": ["integer", "null"]}, "gpu": PLACEMENT}},
}
# One start or wake (anatomy/record.py): its phases in order, each with the seconds the
# supervisor measured and, where the server logged one, the server's own figure.
START: Json = {
    "type": "object", "required": ["unit", "kind", "profile", "seconds", "phases"],
    "properties": {
        "unit": {"type": "string"}, "kind": {"type": "string", "enum": ["start", "wake"]},
        "profile": {"type": "string"}, "began": {"type": "number"},
        "seconds": {"type": "number"}, "ok": {"type": ["boolean", "null"]},
        "phase": {"type": ["string", "null"]},
        "compile_cache": {"type": ["string", "null"], "enum": ["hit", "miss", None]},
        "level": {"type": "integer", "enum": [1, 2],
                  "description": "A wake's: the sleep level it woke from"},
        "phases": {"type": "array", "items": {
            "type": "object", "required": ["phase", "seconds"],
            "properties": {"phase": {"type": "string"}, "seconds": {"type": "number"},
                           "server_seconds": {"type": "number"}}}},
    },
}
IDLE: Json = {
    "type": ["object", "null"],
    "description": "The idle policy's current choice and why; the seconds it weighs",
    "required": ["policy", "sleep_after", "stop_after", "prewarm_at", "reason"],
    "properties": {
        "policy": {"type": "string", "enum": ["fixed", "adaptive"]},
        "sleep_after": NULLABLE_NUMBER, "stop_after": {"type": "number"},
        "prewarm_at": {**NULLABLE_NUMBER, "description": "wall-clock seconds"},
        "reason": {"type": "string"}, "prewarms": {"type": "integer"},
        "last_prewarm": NULLABLE_NUMBER, "prewarm_reason": {"type": ["string", "null"]},
        "measured": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
    },
}
MODEL: Json = {
    "type": "object",
    "required": ["name", "state", "pinned", "idle_timeout", "idle_seconds", "in_flight", "held"],
    "properties": {
        "name": {"type": "string"}, "aliases": {"type": "array", "items": {"type": "string"}},
        "state": {"type": "string", "enum": [s.value for s in State]},
        "profile": {"type": ["string", "null"]},
        "profiles": {"type": "array", "items": {"type": "string"}},
        "pinned": {"type": "boolean"}, "pinned_by_operator": {"type": "boolean"},
        "pinned_by_schedules": {"type": "array", "items": {"type": "string"}},
        "idle_timeout": {"type": "number"}, "idle_timeout_override": NULLABLE_NUMBER,
        "idle_seconds": {"type": "number"}, "in_flight": {"type": "integer"},
        "held": {"type": "integer"}, "last_cold_start_seconds": NULLABLE_NUMBER,
        "vram_bytes": {"type": ["integer", "null"]}, "sleep_supported": {"type": "boolean"},
        "last_error": {"type": ["string", "null"]},
        "start_failures": {"type": "integer"}, "retry_in_seconds": {"type": "number"},
        "gpu": PLACEMENT, "replicas": REPLICAS, "idle": IDLE,
    },
}
CRON: Json = {"type": "string", "minLength": 9, "maxLength": 100,
              "description": "A crontab line: minute hour day month day-of-week"}
SCHEDULE_IN: Json = {
    "type": "object", "additionalProperties": False, "required": ["name", "model", "start", "end"],
    "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                   "model": {"type": "string"}, "start": CRON, "end": CRON,
                   "profile": {"type": ["string", "null"]}},
}
SCHEDULE: Json = {"type": "object", "required": ["name", "model", "start", "end", "origin"],
                  "properties": {**SCHEDULE_IN["properties"],
                                 "origin": {"type": "string", "enum": ["config", "api"]},
                                 "open": {"type": "boolean"},
                                 "next_start": {"type": ["string", "null"]},
                                 "next_end": {"type": ["string", "null"]}}}
DRAIN: Json = {"type": "object", "required": ["draining", "in_flight"],
               "properties": {"draining": {"type": "boolean"}, "in_flight": {"type": "integer"}}}
MAX_EVENTS = 1000  # GET /admin/events?limit=
EVENT: Json = {
    "type": "object", "required": ["seq", "time", "model", "from", "to", "event"],
    "properties": {"seq": {"type": "integer"}, "time": {"type": "number"},
                   "model": {"type": "string"}, "from": {"type": "string"},
                   "to": {"type": "string"}, "event": {"type": "string"},
                   "profile": {"type": "string"}, "error": {"type": ["string", "null"]},
                   "reason": {"type": ["string", "null"]}},
}
GPU: Json = {
    "type": "object",
    "required": ["index", "uuid", "memory_used_bytes", "memory_total_bytes", "models"],
    "properties": {
        "index": {"type": "integer"}, "uuid": {"type": "string"},
        "memory_used_bytes": {"type": "integer"}, "memory_total_bytes": {"type": "integer"},
        "utilization_ratio": NULLABLE_NUMBER, "power_watts": NULLABLE_NUMBER,
        "models": {"type": "array", "items": {
            "type": "object", "required": ["model", "profile", "bytes"],
            "properties": {"model": {"type": "string"}, "profile": {"type": "string"},
                           "bytes": {"type": "integer"}}}}},
}
RELOAD: Json = {"type": "object", "required": ["added", "removed", "changed", "restart_required"],
                "properties": {k: {"type": "array", "items": {"type": "string"}}
                               for k in ("added", "removed", "changed", "restart_required")}}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


WORKER: Json = {
    "type": "object",
    "required": ["slot", "role", "pid", "alive", "restarts", "requests_forwarded",
                 "in_flight"],
    "properties": {
        "slot": {"type": "integer", "description": "0: the owner"},
        "role": {"type": "string", "enum": ["owner", "worker"]},
        "pid": {"type": ["integer", "null"], "description": "null before its first start"},
        "alive": {"type": "boolean"},
        "restarts": {"type": "integer"},
        "requests_forwarded": {"type": "integer",
                               "description": "requests it answered (any status), "
                                              "across the slot's restarts"},
        "in_flight": {"type": "integer",
                      "description": "its requests in flight (a worker's: as of its last "
                                     "report, at most a second old)"},
    },
}


_USED = {"type": "object", "properties": {k: {"type": "number"} for k in (
    "requests", "seconds", "held_seconds", "prompt_tokens", "completion_tokens")}}
USAGE: Json = {"type": "object", "required": ["clients"], "properties": {"clients": {
    "type": "object", "additionalProperties": {
        "type": "object", "required": ["priority", "models", "total"],
        "properties": {"priority": {"type": "integer"},
                       "models": {"type": "object", "additionalProperties": _USED},
                       "total": _USED}}}}}

_SECONDS = {"type": "object", "additionalProperties": {"type": "number"}}
_TALLY: Json = {
    "type": "object",
    "required": ["state_seconds", "cold_starts", "wakes", "waited_seconds", "gpu_hours_held",
                 "gpu_hours_given_back", "energy_joules"],
    "properties": {
        "state_seconds": {**_SECONDS, "description": "seconds in each state"},
        "profile_state_seconds": {"type": "object", "additionalProperties": _SECONDS,
                                  "description": "per profile (\"\": stopped or failed)"},
        "cold_starts": {"type": "integer"}, "wakes": {"type": "integer"},
        "held_requests": {"type": "object", "additionalProperties": {"type": "integer"},
                          "description": "requests held on a start, on a wake"},
        "waited_seconds": {"type": "number", "description": "what held requests waited"},
        "cold_start_wait_seconds": {"type": "number"}, "wake_wait_seconds": {"type": "number"},
        "gpu_hours_held": {"type": "number"}, "gpu_hours_always_on": {"type": "number"},
        "gpu_hours_given_back": {"type": "number",
                                 "description": "always on (full need) minus held"},
        "gpu_memory_byte_seconds": {"type": "number"},
        "gpu_memory_byte_seconds_given_back": {"type": "number"},
        "energy_joules": {**NULLABLE_NUMBER, "description": "null: NVML reports no energy"}}}
SAVINGS: Json = {"type": "object", "required": ["since", "seconds", "models"], "properties": {
    "since": {"type": "number", "description": "wall-clock seconds the account began"},
    "seconds": {"type": "number"},
    "models": {"type": "object", "description": "per unit (a model, or <model>#<n>)",
               "additionalProperties": {
                   "type": "object", "required": ["model", "since_start", "days"],
                   "properties": {"model": {"type": "string"}, "since_start": _TALLY,
                                  "days": {"type": "object", "additionalProperties": _TALLY,
                                           "propertyNames": {
                                               "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                                           "description": "per UTC day"}}}}}}


_WAITING: Json = {
    "type": "object",
    "required": ["client", "priority", "position", "waited_seconds", "eta_seconds", "phase"],
    "properties": {
        "client": {"type": "string"}, "priority": {"type": "integer"},
        "position": {"type": "integer", "minimum": 1,
                     "description": "its place in the order held requests are released"},
        "waited_seconds": {"type": "number"},
        "eta_seconds": {**NULLABLE_NUMBER, "description": "seconds until the model should "
                        "be ready (its measured start or wake, less the time spent); null: "
                        "nothing measured yet"},
        "phase": {"type": "string", "enum": ["waiting_for_gpus", "starting", "warming_up",
                                             "waking", "swapping", "queued"]}}}
QUEUE: Json = {"type": "object", "required": ["models"], "properties": {"models": {
    "type": "object", "additionalProperties": {
        "type": "object", "required": ["state", "waiting"],
        "properties": {"state": {"type": "string"},
                       "waiting": {"type": "array", "items": _WAITING}}}}}}


def _op(summary: str, ok: tuple[int, Json], *errors: int, body: Json | None = None,
        required: bool = True, public: bool = False) -> Json:
    responses = {str(ok[0]): _json(ok[1], "OK")}
    for status in (*errors, *(() if public else (401,))):
        responses[str(status)] = _json(ERROR, _REASONS[status])
    op: Json = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": required,
                             "content": {"application/json": {"schema": body}}}
    if public:
        op["security"] = []
    return op


_REASONS = {400: "Invalid request", 401: "Missing or wrong token", 404: "Unknown model",
            409: "Not possible in the model's state", 503: "Not ready"}


def _text(media_type: str, description: str, **extra: Json) -> Json:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}},
            **extra}


STATUS_PAGE: Json = {
    "summary": "The status page (HTML; it asks for the token, and its calls carry it)",
    "security": [], "responses": {"200": _text("text/html", "The page")}}
EVENT_STREAM: Json = {
    "summary": "Lifecycle events live, as Server-Sent Events (id: seq, data: the event); "
               "with Last-Event-ID, the missed ones first",
    "parameters": [{"name": "Last-Event-ID", "in": "header", "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}],
    "responses": {"200": _text("text/event-stream", "An endless stream"),
                  "400": _json(ERROR, "Invalid request"),
                  "401": _json(ERROR, "Missing or wrong token")}}


def _body(**props: Json) -> Json:
    return {"type": "object", "additionalProperties": False, "properties": props,
            "required": [k for k, v in props.items() if v.pop("x-required", False)]}


def spec(models: list[str], profiles: list[str]) -> Json:
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": models or ["none"]}}
    per_model = {"parameters": [name]}
    profile = {"type": "string", "enum": profiles or ["default"]}
    model_ok = (200, MODEL)
    accepted = (202, MODEL)
    return {
        "openapi": "3.1.0",
        "info": {"title": "model-supervisor admin API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/": {"get": STATUS_PAGE},
            "/healthz": {"get": _op("The process is alive", (200, {"type": "object"}),
                                    public=True)},
            "/readyz": {"get": _op("Config loaded and Docker reachable",
                                   (200, {"type": "object"}), 503, public=True)},
            "/admin/openapi.json": {"get": _op("This document", (200, {"type": "object"}))},
            "/admin/models": {"get": _op("Every model's state and toggles", (200, {
                "type": "object", "required": ["models", "draining"],
                "properties": {"models": {"type": "array", "items": MODEL},
                               "draining": {"type": "boolean"}}}))},
            "/admin/models/{name}": {**per_model, "get": _op("One model, with its last starts", (
                200, {**MODEL, "properties": {**MODEL["properties"], "starts": {
                    "type": "array", "items": START}, "wake_seconds": {
                    "type": "object", "description": "The last wake from each sleep level "
                    "(level1, level2), beside last_cold_start_seconds",
                    "additionalProperties": {"type": "number"}}}}), 404)},
            "/admin/models/{name}/starts": {**per_model, "get": _op(
                "Its last starts and wakes, each phase's seconds", (200, {
                    "type": "object", "required": ["model", "starts"],
                    "properties": {"model": {"type": "string"},
                                   "starts": {"type": "array", "items": START}}}), 404)},
            "/admin/models/{name}/start": {**per_model, "post": _op(
                "Start it (under a profile); a running model on another profile swaps",
                accepted, 400, 404, 409, body=_body(profile=dict(profile)), required=False)},
            "/admin/models/{name}/stop": {**per_model, "post": _op(
                "Stop it once requests in flight finish; force: at once, failing them (503)",
                accepted, 400, 404, 409, body=_body(force={"type": "boolean"}),
                required=False)},
            "/admin/models/{name}/sleep": {**per_model, "post": _op(
                "vLLM sleep mode (409 when the model has none)", accepted, 404, 409)},
            "/admin/models/{name}/wake": {**per_model, "post": _op(
                "Wake from sleep mode", accepted, 404, 409)},
            "/admin/models/{name}/pin": {**per_model, "put": _op(
                "A pinned model is never stopped for being idle", model_ok, 400, 404,
                body=_body(pinned={"type": "boolean", "x-required": True}))},
            "/admin/models/{name}/idle-timeout": {**per_model, "put": _op(
                "Override the idle timeout (seconds; null: back to the config's)", model_ok,
                400, 404, body=_body(seconds={"type": ["number", "null"], "minimum": 0,
                                              "maximum": 2592000, "x-required": True}))},
            "/admin/models/{name}/profile": {**per_model, "put": _op(
                "Swap to a profile now (requests in flight finish, new ones wait)", accepted,
                400, 404, 409, body=_body(profile={**profile, "x-required": True}))},
            "/admin/drain": {"post": _op("Maintenance mode: new requests get 503",
                                         (200, DRAIN))},
            "/admin/undrain": {"post": _op("Leave maintenance mode", (200, DRAIN))},
            "/admin/reload": {"post": _op("Re-read the config file", (200, RELOAD), 400)},
            "/admin/schedules": {
                "get": _op("Keep-warm schedules", (200, {
                    "type": "object", "required": ["schedules"],
                    "properties": {"schedules": {"type": "array", "items": SCHEDULE}}})),
                "post": _op("Add or replace a keep-warm schedule", (201, SCHEDULE), 400, 409,
                            body=SCHEDULE_IN)},
            "/admin/schedules/{schedule}": {
                "parameters": [{"name": "schedule", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "delete": _op("Remove a schedule added through the API",
                              (200, {"type": "object"}), 404, 409)},
            "/admin/events": {"get": {
                **_op("The last lifecycle events, oldest first", (200, {
                    "type": "object", "required": ["events"],
                    "properties": {"events": {"type": "array", "items": EVENT}}}), 400),
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1,
                                           "maximum": MAX_EVENTS}}]}},
            "/admin/events/stream": {"get": EVENT_STREAM},
            "/admin/gpus": {"get": _op("Each GPU's memory and the models' share (NVML)", (200, {
                "type": "object", "required": ["available", "gpus"],
                "properties": {"available": {"type": "boolean"},
                               "gpus": {"type": "array", "items": GPU}}}))},
            "/admin/workers": {"get": _op(
                "The processes on the proxy port (`workers: N`): the owner, then each "
                "worker slot; empty with one process", (200, {
                    "type": "object", "required": ["workers"],
                    "properties": {"workers": {"type": "array", "items": WORKER}}}))},
            "/admin/usage": {"get": _op(
                "What each client (configured names and `anonymous`) used, per model and "
                "in total: requests, seconds, held seconds, prompt and completion tokens",
                (200, USAGE))},
            "/admin/queue": {"get": _op(
                "Per model, the requests held for it in the order they are released: "
                "client, priority, position, seconds waited, ETA and phase", (200, QUEUE))},
            "/admin/savings": {"get": _op(
                "What idling saved and cost per model (and replica), since the start and "
                "per UTC day: state seconds, cold starts, wakes, seconds held requests "
                "waited, GPU-hours held and given back against always on, energy",
                (200, SAVINGS))},
        },
    }
