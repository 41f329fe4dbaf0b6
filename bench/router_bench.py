"""What routing costs one JSON request: `resolve()` (read the body, find the model, estimate,
rewrite an alias) on a 300-byte chat body and on a 50 KB chat history, per request.

The request is aiohttp's mocked request over an in-memory stream, so the figures are the
router's own CPU time (no sockets). Models: `plain` (no profile limits: only `model` is
needed), `alias` (the same model called by an alias: the body is rewritten), `estimate`
(profiles with max_model_len: the token estimate needs the parsed body).

    .venv/bin/python bench/router_bench.py [--router /path/to/router.py] [--runs 7]

`--router` loads another version of supervisor/proxy/router.py (e.g. the one before a
change, from `git show REV:supervisor/proxy/router.py`) so both are measured on one machine.
Prints a table; writes bench/results/router.json (or --json).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.lifecycle.registry import Registry  # noqa: E402
from supervisor.tokens.estimate import load_estimator  # noqa: E402
from tests.fakes import make_handle  # noqa: E402

MAX_BODY = 512 << 20


def small_body(model: str) -> bytes:
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences, "
                                        "and name the play's most quoted line."},
        ],
        "max_tokens": 128, "temperature": 0.7, "stream": False,
    }
    return json.dumps(body).encode()


def history_body(model: str, size: int = 50_000) -> bytes:
    line = ("The committee met on Tuesday to review the \"draft\" budget; members asked "
            "for clearer figures — especially for travel (€) and equipment.\n")
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a careful analyst."}]
    body = {"model": model, "messages": messages, "max_tokens": 256}
    while len(json.dumps(body)) < size:
        role = "user" if len(messages) % 2 else "assistant"
        messages.append({"role": role, "content": line * 6})
    return json.dumps(body).encode()


def load_router(path: Path | None) -> ModuleType:
    if path is None:
        import supervisor.proxy.router as router

        return router
    spec = importlib.util.spec_from_file_location("router_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def registry() -> Registry:
    plain, _, _ = make_handle({"service": "s", "upstream": "http://127.0.0.1:1",
                               "aliases": ["chat-alias"]}, name="chat")
    limited, _, _ = make_handle({"upstream": "http://127.0.0.1:2", "profiles": {
        "short": {"service": "a", "max_model_len": 1 << 20}}}, name="limited")
    limited.configure(load_estimator(limited.config), {})
    return Registry([plain, limited])


def app_for(router: ModuleType) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    try:
        from supervisor.proxy.body_budget import BODY_BUDGET, BodyBudget
    except ImportError:  # the router before the body budget
        return app
    app[BODY_BUDGET] = BodyBudget(1 << 30)
    return app


class _Protocol:
    """What a StreamReader asks of its protocol (a Mock would add its own cost to reads)."""

    _reading_paused = False

    def pause_reading(self, **_: object) -> None:
        self._reading_paused = True

    def resume_reading(self, **_: object) -> None:
        self._reading_paused = False


def request(app: web.Application, body: bytes) -> web.Request:
    """A mocked request (building one costs ~1 ms, not timed) over an in-memory stream."""
    stream = StreamReader(_Protocol(), 1 << 16,  # type: ignore[arg-type]
                          loop=asyncio.get_running_loop())
    stream.feed_data(body)
    stream.feed_eof()
    return make_mocked_request(
        "POST", "/v1/chat/completions", app=app, payload=stream, client_max_size=MAX_BODY,
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))})


async def per_request_us(router: ModuleType, body: bytes, runs: int, n: int) -> float:
    """The fastest of `runs` batches of `n` requests, per request: on a shared machine the
    minimum is the figure least disturbed by others."""
    app, reg = app_for(router), registry()
    means = []
    for _ in range(runs):
        batch = [request(app, body) for _ in range(n)]
        began = time.perf_counter()
        for req in batch:
            routed = await router.resolve(req, reg)
            routed.body.close()
        means.append((time.perf_counter() - began) / n * 1e6)
    return min(means)


async def run(router: ModuleType, runs: int) -> list[dict[str, Any]]:
    rows = []
    for size, make, n in (("300 B", small_body, 1_000), ("50 KB", history_body, 200)):
        for case, model in (("plain", "chat"), ("alias", "chat-alias"),
                            ("estimate", "limited")):
            body = make(model)
            us = await per_request_us(router, body, runs, n)
            rows.append({"body": size, "bytes": len(body), "case": case, "us": us})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--router", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "router.json")
    args = parser.parse_args()
    router = load_router(args.router)
    rows = asyncio.run(run(router, args.runs))
    label = str(args.router or "supervisor/proxy/router.py")
    print(f"router: {label}")
    print(f"{'body':>6} {'bytes':>7} {'case':>9} {'us/request':>11}")
    for r in rows:
        print(f"{r['body']:>6} {r['bytes']:7d} {r['case']:>9} {r['us']:11.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"router": label, "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
