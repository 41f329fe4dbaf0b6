"""`model-supervisor serve | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from supervisor.app import start_server
from supervisor.checks import check
from supervisor.config import Config, ConfigError, load_config


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
    problems = check(config)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if problems:
        print(f"{path}: invalid configuration", file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.models)} models)")
    return 0


async def _serve(config: Config) -> None:
    runner = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger(__name__).info("shutting down; running services stay up for adoption")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="model-supervisor")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", "-c", required=True)
    check_cmd = sub.add_parser("check-config", help="validate a config without starting anything")
    check_cmd.add_argument("config")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        return _check_config(args.config)
    config = _load(args.config)
    if config is None:
        return 1
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
