"""The whole dashboard: its rows in order, laid out on Grafana's 24-column grid."""

from __future__ import annotations

import json
from collections.abc import Iterator

from dashboards import rows_gpu, rows_models, rows_traffic
from dashboards.panels import DS, Json


def rows() -> Iterator[tuple[str, list[Json]]]:
    yield "Models", rows_models.models()
    yield "Replicas", rows_models.replicas()
    yield "Cold starts and holds", rows_models.cold_starts()
    yield "What idling saved", rows_gpu.savings()
    yield "GPU", rows_gpu.gpu()
    yield "Requests", rows_traffic.requests()
    yield "Clients", rows_traffic.clients()
    yield "vLLM", rows_traffic.vllm()


def layout() -> list[Json]:
    """Flow the panels left to right, top to bottom, each row under a row header."""
    out: list[Json] = []
    y = 0
    for title, panels in rows():
        out.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                    "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
        y += 1
        x = row_h = 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
            x, row_h = x + w, max(row_h, h)
            out.append(p)
        y += row_h
    for i, p in enumerate(out, start=1):
        p["id"] = i
    return out


def variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": name},
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1, "hide": 0,
    }


def dashboard() -> Json:
    return {
        "uid": "model-supervisor", "title": "model-supervisor",
        "description": "Models started on demand: lifecycle, VRAM, cold starts, requests, vLLM.",
        "tags": ["model-supervisor", "vllm", "gpu"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "annotations": {"list": []},
        "templating": {"list": [
            # A datasource variable, not ${DS_PROMETHEUS}/__inputs: provisioning does
            # not resolve __inputs, a datasource variable works in both.
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "regex": "", "hide": 0, "refresh": 1,
             "current": {}},
            variable("model", "Model", "label_values(supervisor_model_state, model)"),
            variable("gpu", "GPU", "label_values(supervisor_gpu_memory_total_bytes, gpu)"),
        ]},
        "panels": layout(),
    }


def render(board: Json) -> str:
    return json.dumps(board, indent=2) + "\n"
