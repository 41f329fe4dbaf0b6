"""Builds the Grafana dashboard for model-supervisor (and vLLM) as plain JSON.

    python dashboards/generate.py           # writes dashboards/model-supervisor.json
    python dashboards/generate.py --check   # exit 1 if that file is stale, or a panel
                                            # queries a metric nobody exports

The dashboard is generated rather than hand-edited so that every PromQL name can be
checked against what `supervisor.metrics.Metrics` really exports: a renamed metric
breaks the check instead of silently emptying a panel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from dashboards.board import dashboard, render  # noqa: E402
from dashboards.panels import Json  # noqa: E402
from dashboards.promql import (  # noqa: E402
    VLLM_METRICS,
    exported_names,
    for_prometheus,
    metric_names,
    queries,
)
from supervisor.clients.report import SERIES  # noqa: E402

__all__ = ["check", "dashboard", "exported_names", "for_prometheus", "main", "metric_names",
           "queries", "render"]

OUTPUT = Path(__file__).with_name("model-supervisor.json")


def check(board: Json, committed: str | None) -> list[str]:
    problems: list[str] = []
    known = exported_names() | VLLM_METRICS | {f"{name}_total" for name, _, _ in SERIES}
    for title, expr in queries(board):
        for name in sorted(metric_names(expr) - known):
            problems.append(f"panel {title!r}: metric {name!r} is neither exported by "
                            "supervisor.metrics.Metrics nor a documented vLLM metric")
    if committed is None:
        problems.append(f"{OUTPUT.name} is missing: run python dashboards/generate.py")
    elif committed != render(board):
        old = {p.get("title"): p for p in json.loads(committed).get("panels", [])}
        new = {p["title"]: p for p in board["panels"]}
        differ = sorted(str(t) for t in old.keys() | new.keys() if old.get(t) != new.get(t))
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if differ[5:] else "")
        problems.append(f"{OUTPUT.name} differs from the generated dashboard "
                        f"(panels: {shown or 'none; other fields'}): "
                        "run python dashboards/generate.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the committed JSON and the metric names; write nothing")
    args = parser.parse_args(argv)
    board = dashboard()
    if args.check:
        committed = OUTPUT.read_text() if OUTPUT.exists() else None
        problems = check(board, committed)
        for problem in problems:
            print(f"dashboards: {problem}", file=sys.stderr)
        return 1 if problems else 0
    problems = check(board, render(board))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    OUTPUT.write_text(render(board))
    print(f"wrote {OUTPUT} ({len(board['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
