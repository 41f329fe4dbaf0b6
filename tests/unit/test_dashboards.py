"""The committed Grafana dashboard is the generated one and queries only real metrics."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from dashboards import generate as gen

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "dashboards" / "generate.py"


def test_check_passes_on_committed_dashboard() -> None:
    done = subprocess.run([sys.executable, str(GENERATOR), "--check"],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_check_names_a_stale_panel() -> None:
    board = gen.dashboard()
    stale = copy.deepcopy(board)
    stale["panels"][1]["targets"][0]["expr"] = "supervisor_model_state"
    problems = gen.check(board, gen.render(stale))
    assert len(problems) == 1
    assert board["panels"][1]["title"] in problems[0]
    assert "differs from the generated dashboard" in problems[0]


def test_check_names_panel_and_unknown_metric() -> None:
    board = gen.dashboard()
    board["panels"][1]["targets"][0]["expr"] = 'rate(supervisor_requests_totl{model="a"}[5m])'
    problems = gen.check(board, gen.render(board))
    assert problems == [
        f"panel {board['panels'][1]['title']!r}: metric 'supervisor_requests_totl' is neither "
        "exported by supervisor.metrics.Metrics nor a documented vLLM metric"
    ]


def test_main_exits_1_when_the_file_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "model-supervisor.json"
    stale.write_text("{}\n")
    monkeypatch.setattr(gen, "OUTPUT", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0  # regenerates
    assert gen.main(["--check"]) == 0


def test_datasource_is_a_variable_not_an_input() -> None:
    board = gen.dashboard()
    text = gen.render(board)
    assert "DS_PROMETHEUS" not in text and "__inputs" not in board
    ds = board["templating"]["list"][0]
    assert (ds["name"], ds["type"], ds["query"]) == ("datasource", "datasource", "prometheus")
    for p in board["panels"]:
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_required_panels_and_vllm_series_are_present() -> None:
    used = {n for _, expr in gen.queries(gen.dashboard()) for n in gen.metric_names(expr)}
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc", "vllm:engine_sleep_state"} <= used
    assert {"supervisor_model_state", "supervisor_model_gpu_memory_bytes",
            "supervisor_gpu_memory_total_bytes", "supervisor_request_ttfb_seconds_bucket",
            "supervisor_refusals_total", "supervisor_model_profile_swaps_total",
            "supervisor_model_idle_seconds", "supervisor_model_held"} <= used


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (model, le) (rate(a_bucket{model=~"$model",le!="x"}[$__rate_interval]))',
         {"a_bucket"}),
        ("histogram_quantile(0.95, sum without (pod) (rate(vllm:e2e_bucket[5m])))",
         {"vllm:e2e_bucket"}),
        ("a / on (model) group_left (profile) b", {"a", "b"}),
        ("a > bool 0 and b unless c or d offset 1h30m", {"a", "b", "c", "d"}),
        ('label_replace(x, "dst", "$1 sum(y)", "src", "(.*)")', {"x"}),
        ("max_over_time(x[1h:5m]) @ end() + 1e3 * Inf", {"x"}),
        ('{__name__="named_only", job="j"}', {"named_only"}),
        ("sum(x) by (le) - (sum(y) or vector(0))", {"x", "y"}),
        ("topk(5, x) offset -5m", {"x"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert gen.metric_names(expr) == names


def test_for_prometheus_replaces_grafana_variables() -> None:
    expr = 'rate(x{model=~"$model",gpu=~"$gpu"}[$__rate_interval]) + increase(y[$__range])'
    assert gen.for_prometheus(expr) == 'rate(x{model=~".*",gpu=~".*"}[1m]) + increase(y[1h])'


def test_start_phases_are_stacked_per_model_from_the_exported_histogram() -> None:
    board = gen.dashboard()
    [phases] = [p for p in board["panels"] if p["title"].startswith("Start phases")]
    assert phases["repeat"] == "model"
    assert phases["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    [query] = [t["expr"] for t in phases["targets"]]
    assert gen.metric_names(query) == {"supervisor_start_phase_seconds_sum",
                                       "supervisor_start_phase_seconds_count"}
    assert gen.metric_names(query) <= gen.exported_names()
    assert "sum by (phase)" in query
