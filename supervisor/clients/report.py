"""Usage per client and model, for `GET /admin/usage` and the metrics (read at scrape:
the counters live on the clients, so the hot path adds to plain numbers)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.clients.table import Clients
from supervisor.clients.usage import Usage

# (metric name, help, the Usage field it counts)
SERIES = (
    ("supervisor_client_requests", "Requests a model answered, by client", "requests"),
    ("supervisor_client_seconds", "Seconds from request to the end of its answer, by client",
     "seconds"),
    ("supervisor_client_held_seconds", "Seconds requests were held for a model, by client",
     "held_seconds"),
    ("supervisor_client_prompt_tokens", "Prompt tokens (the answers' usage), by client",
     "prompt_tokens"),
    ("supervisor_client_completion_tokens",
     "Completion tokens (the answers' usage), by client", "completion_tokens"),
)


def usage_report(clients: Clients) -> dict[str, Any]:
    """Every configured client (and `anonymous`): its usage per model and in total."""
    report: dict[str, Any] = {}
    for client in clients.every():
        total = Usage()
        for used in client.usage.values():
            total.merge(used)
        report[client.name] = {
            "priority": client.priority,
            "models": {model: used.as_dict() for model, used in sorted(client.usage.items())},
            "total": total.as_dict(),
        }
    return {"clients": report}


class UsageCollector(Collector):
    """Counters labelled by client (configured names and `anonymous` only) and model."""

    def __init__(self, clients: Callable[[], Clients]) -> None:
        self._clients = clients

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(name, doc, labels=["client", "model"])
                for name, doc, _ in SERIES]

    def collect(self) -> Iterable[Metric]:
        families = [(CounterMetricFamily(name, doc, labels=["client", "model"]), field)
                    for name, doc, field in SERIES]
        for client in self._clients().every():
            for model, used in client.usage.items():
                for family, field in families:
                    family.add_metric([client.name, model], getattr(used, field))
        return [family for family, _ in families]
