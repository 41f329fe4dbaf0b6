"""check-config's cache warning, on services as `docker compose config --format json`
resolves them."""

from __future__ import annotations

from typing import Any

from supervisor.ops.cache_check import cache_dirs, cache_warnings, mounted

VLLM = {"image": "vllm/vllm-openai:latest"}


def bind(target: str, kind: str = "bind") -> dict[str, Any]:
    return {"type": kind, "source": "/srv/x", "target": target}


def test_a_service_with_no_cache_mount_is_warned_twice_with_its_key_path() -> None:
    service = {**VLLM, "volumes": [bind("/models")]}
    found = cache_warnings("models.chat.profiles.long.service", "chat-long", service)
    assert len(found) == 2
    assert all(w.startswith("models.chat.profiles.long.service: ") for w in found)
    assert all("services.chat-long.volumes" in w for w in found)
    assert "(/root/.cache/vllm)" in found[0] and "VLLM_CACHE_ROOT" in found[0]
    assert "(/root/.cache/huggingface)" in found[1] and "HF_HOME" in found[1]


def test_volumes_at_the_caches_or_above_them_silence_it() -> None:
    both = {**VLLM, "volumes": [bind("/root/.cache/vllm", "volume"),
                                bind("/root/.cache/huggingface")]}
    above = {**VLLM, "volumes": [bind("/root/.cache/")]}
    assert cache_warnings("k", "s", both) == []
    assert cache_warnings("k", "s", above) == []


def test_a_tmpfs_or_a_sibling_path_does_not_count() -> None:
    assert not mounted({"volumes": [bind("/root/.cache/vllm", "tmpfs")]}, "/root/.cache/vllm")
    assert not mounted({"volumes": [bind("/root/.cache/vl")]}, "/root/.cache/vllm")


def test_the_variables_move_the_caches_as_vllm_and_huggingface_hub_read_them() -> None:
    service = {"environment": {"HOME": "/home/app", "XDG_CACHE_HOME": "/var/cache",
                               "HF_HUB_CACHE": "~/hub"}}
    assert [(v, p) for _, v, p in cache_dirs(service)] == [
        ("VLLM_CACHE_ROOT", "/var/cache/vllm"), ("HF_HUB_CACHE", "/home/app/hub")]
    moved = {**VLLM, "environment": {"VLLM_CACHE_ROOT": "/cache/vllm", "HF_HOME": "/cache/hf"},
             "volumes": [bind("/cache")]}
    assert cache_warnings("k", "s", moved) == []


def test_a_service_that_does_not_run_vllm_is_not_warned() -> None:
    standin = {"image": "model-supervisor/standin", "command": ["python", "standin.py"]}
    cpu_build = {"image": "empty", "entrypoint": ["python", "-m", "vllm.entrypoints.x"]}
    assert cache_warnings("k", "s", standin) == []
    assert len(cache_warnings("k", "s", cpu_build)) == 2
