"""The GPU host's files, checked by the real tools: Compose parses the monitoring stack
and the models' file, and promtool accepts the Prometheus config."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers import unavailable

REPO = Path(__file__).resolve().parents[2]


def compose_config(*args: str) -> dict:
    done = subprocess.run(["docker", "compose", *args, "config", "--format", "json"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    return json.loads(done.stdout)


def test_the_stack_runs_supervisor_prometheus_and_grafana_but_no_model() -> None:
    stack = compose_config("-f", "compose/stack.yml")
    assert set(stack["services"]) == {"supervisor", "prometheus", "grafana"}
    supervisor = stack["services"]["supervisor"]
    mounts = {v["target"] for v in supervisor["volumes"]}
    assert "/var/run/docker.sock" in mounts
    assert supervisor["pid"] == "host" and supervisor["network_mode"] == "host"
    grafana_mounts = {v["target"] for v in stack["services"]["grafana"]["volumes"]}
    assert "/etc/grafana/provisioning/dashboards" in grafana_mounts
    assert "/var/lib/grafana/dashboards/model-supervisor/model-supervisor.json" in grafana_mounts


def test_model_services_start_only_when_named() -> None:
    plain = compose_config("-f", "compose/models.yml")
    assert plain.get("services", {}) == {}  # `docker compose up` alone starts nothing
    every = compose_config("-f", "compose/models.yml", "--profile", "*")
    assert "step-audio-64k" in every["services"]


def test_prometheus_scrapes_the_supervisor_and_the_example_models() -> None:
    if shutil.which("promtool") is None:
        unavailable("promtool", "no promtool: it comes with Debian's prometheus package")
    subprocess.run(["promtool", "check", "config", "compose/prometheus.yml"], cwd=REPO,
                   check=True, capture_output=True, timeout=60)
    scrape = yaml.safe_load((REPO / "compose" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    example = yaml.safe_load((REPO / "model-supervisor.example.yaml").read_text())
    assert example["listen"] in targets
    for model in example["models"].values():
        assert model["upstream"].removeprefix("http://") in targets
