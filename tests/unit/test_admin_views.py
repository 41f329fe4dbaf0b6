"""What the status page reads besides the models: the GPU view built from the metrics
registry (the sampler's last reading), and the page's own Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from supervisor.observe.gpu import Device, GpuSample, ModelMemory
from supervisor.observe.metrics import Metrics
from supervisor.ops.gpus import gpu_view
from supervisor.ops.status_page import FIRST_STATE, _page, render

GIB = 1 << 30


def test_gpu_view_has_each_gpu_with_the_models_memory_on_it() -> None:
    sample = GpuSample(
        True,
        devices=(Device(1, "GPU-b", 30 * GIB, 80 * GIB, None, None),
                 Device(0, "GPU-a", 50 * GIB, 80 * GIB, 0.5, 300.0)),
        models=(ModelMemory("audio", "64k", 0, 20 * GIB), ModelMemory("chat", "default", 0,
                                                                       28 * GIB),
                ModelMemory("audio", "64k", 1, 20 * GIB)))
    view = gpu_view(Metrics(gpu=lambda: sample).registry)
    assert view["available"] is True
    first, second = view["gpus"]
    assert first == {"index": 0, "uuid": "GPU-a", "memory_used_bytes": 50 * GIB,
                     "memory_total_bytes": 80 * GIB, "utilization_ratio": 0.5,
                     "power_watts": 300.0,
                     "models": [{"model": "chat", "profile": "default", "bytes": 28 * GIB},
                                {"model": "audio", "profile": "64k", "bytes": 20 * GIB}]}
    assert (second["index"], second["utilization_ratio"], second["models"]) == (
        1, None, [{"model": "audio", "profile": "64k", "bytes": 20 * GIB}])


def test_gpu_view_without_a_reading_or_without_nvml() -> None:
    none_yet = {"available": False, "gpus": []}
    assert gpu_view(Metrics(gpu=lambda: None).registry) == none_yet
    assert gpu_view(Metrics().registry) == none_yet
    no_nvml = GpuSample(False, reason="NVML: NVML Shared Library Not Found")
    assert gpu_view(Metrics(gpu=lambda: no_nvml).registry) == none_yet


def test_the_page_allows_exactly_its_own_script_and_style() -> None:
    html, csp = _page()
    policy = dict(part.split(" ", 1) for part in csp.split("; "))
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert not re.search(r"<script[^>]+src=|<link[^>]+stylesheet|https?://(?!www\.w3)", html)


def first_state_of(html: str) -> object:
    """The page's first state, read back as the page's script does (JSON.parse)."""
    (data,) = re.findall(r'<script type="application/json" id="first-state">(.*?)</script>',
                         html, re.S)
    return json.loads(data)


def test_the_page_carries_its_first_state_in_a_data_block_no_string_can_end() -> None:
    html, csp = _page()
    assert html.count(FIRST_STATE) == 1
    assert first_state_of(render(html, None)) is None  # with a token: nothing in the page
    error = "</script><script>alert(1)</script> & <!-- -->"
    state = {"models": [{"name": "m", "state": "failed", "last_error": error}],
             "draining": False, "events": [], "gpus": {"available": False, "gpus": []}}
    page = render(html, state)
    assert first_state_of(page) == state
    assert "</script><script>alert" not in page and "<!-- -->" not in page
    # The data block is not a script the policy must allow: the hashes stay the same.
    assert re.findall(r"<script>(.*?)</script>", page, re.S) == re.findall(
        r"<script>(.*?)</script>", html, re.S)
    assert csp == _page()[1]
