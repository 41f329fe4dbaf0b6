"""`model-supervisor simulate --config CFG --trace FILE [--policy fixed|adaptive] [--json]
[--sweep idle_timeout=1m,5m,...] [--start NAME=45s] [--wake NAME=2s] [--stop NAME=3s]`.

Start, stop and wake seconds per model: the flags, else what the supervisor measured
(the state file's `idle` section), else 30 s, 3 s and 2 s. `--json` prints one object:
`{"models": {NAME: {...}}}`; with `--sweep`, `{"sweep": {"key": KEY, "runs": [{"value":
TEXT, "seconds": S, "models": {...}}, ...]}}`, one run per value in the order given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from supervisor.config import Config, ConfigError, load_config, parse_duration
from supervisor.idle.history import SECTION, measured_seconds
from supervisor.simulate.engine import Setup, replay
from supervisor.simulate.fake_runtime import DEFAULTS, Durations
from supervisor.simulate.report import as_json, table
from supervisor.simulate.trace import TraceError, load
from supervisor.state_file import StateFile

SWEEPABLE = ("idle_timeout", "min_idle")


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("simulate", help="replay a request trace (the journal) through the "
                                          "lifecycle on a virtual clock")
    cmd.add_argument("--config", "-c", required=True)
    cmd.add_argument("--trace", required=True, help="JSON lines: the journal, or "
                     '{"t": SECONDS_FROM_START, "model": NAME, "duration": SECONDS}')
    cmd.add_argument("--policy", choices=("fixed", "adaptive"),
                     help="for every model (default: each model's idle_policy)")
    cmd.add_argument("--json", action="store_true", help="one JSON object on stdout")
    cmd.add_argument("--sweep", help=f"KEY=V1,V2,... with KEY one of {', '.join(SWEEPABLE)}")
    for kind in ("start", "wake", "stop"):
        cmd.add_argument(f"--{kind}", action="append", default=[], metavar="NAME=SECONDS",
                         help=f"a model's {kind} time (repeatable)")


def _durations(args: argparse.Namespace, config: Config) -> dict[str, Durations]:
    measured = measured_seconds(StateFile(config.state_file).load().get(SECTION))
    given: dict[str, dict[str, float]] = {}
    for kind in ("start", "wake", "stop"):
        for item in getattr(args, kind):
            name, sep, value = item.partition("=")
            if not sep or name not in config.models:
                raise ValueError(f"--{kind} {item!r}: expected NAME=DURATION with NAME a "
                                 f"model of the config ({', '.join(config.models)})")
            given.setdefault(name, {})[kind] = parse_duration(value)
    return {name: Durations(**{k: given.get(name, {}).get(k, measured.get(name, {}).get(k, d))
                               for k, d in DEFAULTS.items()})
            for name in config.models}


def _sweep(text: str | None) -> tuple[str, list[tuple[str, float]]] | None:
    if text is None:
        return None
    key, sep, values = text.partition("=")
    if not sep or key not in SWEEPABLE or not values:
        raise ValueError(f"--sweep {text!r}: expected KEY=V1,V2,... with KEY one of "
                         f"{', '.join(SWEEPABLE)}")
    return key, [(v, parse_duration(v)) for v in values.split(",")]


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        trace = load(args.trace)
        durations = _durations(args, config)
        sweep = _sweep(args.sweep)
        if not sweep:
            result = as_json(replay(trace, Setup(config, durations, args.policy)))
            print(json.dumps(result) if args.json else table(result))
            return 0
        key, values = sweep
        runs = []
        for text, seconds in values:
            setup = Setup(config, durations, args.policy, ((key, seconds),))
            runs.append({"value": text, "seconds": seconds, **as_json(replay(trace, setup))})
    except ConfigError as exc:
        print(f"{args.config}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TraceError) as exc:
        print(f"model-supervisor simulate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"sweep": {"key": key, "runs": runs}}))
    else:
        print("\n\n".join(table(r, f"{key}={r['value']}") for r in runs))
    return 0
