"""`model-supervisor serve | check-config | schema | worker | simulate`, and the admin
commands: status, start, stop, pin, unpin, sleep, wake, drain, undrain, reload."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from supervisor.app import raise_open_files_limit, start_server
from supervisor.config import Config, ConfigError, load_config
from supervisor.ops import config_schema
from supervisor.ops.admin_client import AdminClient, AdminError, status_table
from supervisor.ops.checks import check
from supervisor.simulate import command as simulate
from supervisor.workers.worker import run_worker

MODEL_COMMANDS = {  # command -> (method, path suffix, body)
    "start": ("POST", "start", None),
    "stop": ("POST", "stop", None),
    "pin": ("PUT", "pin", {"pinned": True}),
    "unpin": ("PUT", "pin", {"pinned": False}),
    "sleep": ("POST", "sleep", None),
    "wake": ("POST", "wake", None),
}
GLOBAL_COMMANDS = {"drain": "/admin/drain", "undrain": "/admin/undrain",
                   "reload": "/admin/reload"}


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(path: str) -> int:
    config = _load(path)
    if config is None:
        return 1
    warnings: list[str] = []
    problems = check(config, warnings=warnings)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{path}: invalid configuration", file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.models)} models"
          + (f", {len(warnings)} warnings" if warnings else "") + ")")
    return 0


async def _serve(config: Config, path: str) -> None:
    raise_open_files_limit()
    runner = await start_server(config, config_path=Path(path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # What happens, in order; a wrapper (scripts/demo.sh) may remove the containers after.
    logging.getLogger(__name__).info(
        "shutting down: the listeners close; model containers that run are left running "
        "(the next `serve` adopts them)")
    await runner.cleanup()
    logging.getLogger(__name__).info("stopped")


def _admin(args: argparse.Namespace) -> int:
    try:
        client = AdminClient.from_settings(args.config, args.admin)
        if args.command == "status":
            models = client.call("GET", "/admin/models")
            print(status_table(models["models"]))
            if models["draining"]:
                print("maintenance mode: new requests get 503 (undrain to leave it)")
        elif args.command in GLOBAL_COMMANDS:
            print(json.dumps(client.call("POST", GLOBAL_COMMANDS[args.command])))
        else:
            method, suffix, body = MODEL_COMMANDS[args.command]
            if args.command == "start" and args.profile:
                body = {"profile": args.profile}
            if args.command == "stop" and args.force:
                body = {"force": True}
            model = client.call(method, f"/admin/models/{args.model}/{suffix}", body)
            print(f"{model['name']}: {model['state']}"
                  + (" (pinned)" if model["pinned"] else ""))
    except (AdminError, ConfigError) as exc:
        print(f"model-supervisor {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-supervisor")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", "-c", required=True)
    check_cmd = sub.add_parser("check-config", help="validate a config without starting anything")
    check_cmd.add_argument("config")
    sub.add_parser("schema", help="print the config's JSON Schema (model-supervisor.schema.json)")
    worker = sub.add_parser("worker", help="(spawned by serve with `workers: N`) a forwarding "
                                           "worker process")
    worker.add_argument("--config", "-c", required=True)
    worker.add_argument("--fd", type=int, required=True, help="the control channel's socket")
    worker.add_argument("--owner", required=True, help="the owner's private Unix socket")
    simulate.add_parser(sub)
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--config", "-c", help="the supervisor's config (admin.listen, token)")
    admin.add_argument("--admin", help="admin API URL (default: $SUPERVISOR_ADMIN_URL, "
                                       "else http://<admin.listen>)")
    sub.add_parser("status", parents=[admin], help="a table of the models")
    for name in MODEL_COMMANDS:
        cmd = sub.add_parser(name, parents=[admin], help=f"{name} a model")
        cmd.add_argument("model")
        if name == "start":
            cmd.add_argument("--profile")
        if name == "stop":
            cmd.add_argument("--force", action="store_true",
                             help="at once: requests in flight get 503")
    for name in GLOBAL_COMMANDS:
        sub.add_parser(name, parents=[admin], help=f"{name} (admin API)")
    return parser


def _run(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where installed: the proxy is CPU-bound, and it forwards ~25 % more with it."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "simulate":
        return simulate.run(args)
    if args.command == "schema":
        sys.stdout.write(config_schema.render())
        return 0
    if args.command not in ("serve", "worker"):
        return _admin(args)
    config = _load(args.config)
    if config is None:
        return 1
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "worker":
        raise_open_files_limit()
        _run(run_worker(config, args.fd, args.owner))
        return 0
    try:
        _run(_serve(config, args.config))
    except ConfigError as exc:
        print(f"{args.config}: cannot start", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
